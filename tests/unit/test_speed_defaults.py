"""Machine-dependent speed defaults: ``trainer.channels_last: auto``, evaluation in training's
precision/format under inference mode, channels_last kept end to end, the device check's dry run."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from segbench.app import bench
from segbench.app import evaluate as eval_app
from segbench.app import loaded
from segbench.engine import evaluator, measure
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.device import resolve_channels_last, resolve_speed
from segbench.engine.losses import SegmentationLoss
from segbench.engine.optim import build_optimizer, fused_step_options
from segbench.errors import SegbenchError
from tests.conftest import REPO, compose

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_channels_last_auto_follows_the_capability(cpu_bf16):
    assert resolve_channels_last(CPU, "auto", "auto") is cpu_bf16  # auto precision: bf16 where native
    assert resolve_channels_last(CPU, "bf16", "auto") is cpu_bf16  # emulated bf16: NCHW
    assert resolve_channels_last(CPU, "fp32", "auto") is False  # fp32 CPU: measured no gain
    assert resolve_channels_last(CUDA, "bf16", "auto") is True  # tensor cores (no GPU query made)
    assert resolve_channels_last(CUDA, "fp32", "auto") is False
    for given, expected in ((True, True), (False, False), ("true", True), ("off", False)):
        assert resolve_channels_last(CPU, "fp32", given) is expected
    with pytest.raises(SegbenchError, match="channels_last must be auto, true or false"):
        resolve_channels_last(CPU, "fp32", "sometimes")


def test_one_decision_of_precision_and_memory_format(cpu_bf16):
    """resolve_speed: what train, eval, predict and bench run with, from the requested pair."""
    assert resolve_speed(CPU) == (("bf16", True) if cpu_bf16 else ("fp32", False))
    assert resolve_speed(CPU, "bf16", "auto") == ("bf16", cpu_bf16)  # emulated bf16 keeps NCHW
    assert resolve_speed(CPU, "fp32", True) == ("fp32", True)
    assert resolve_speed(CUDA, "fp16", "auto") == ("fp16", True)  # no GPU query for an explicit precision


def test_bench_default_row_is_what_train_runs(cpu_bf16):
    trainer = OmegaConf.load(REPO / "segbench" / "conf" / "trainer" / "default.yaml")
    default = measure.default_setting(CPU, trainer)
    assert default == (measure.Setting("bf16", True) if cpu_bf16 else measure.Setting("fp32", False))
    settings = [measure.Setting("fp32", False), measure.Setting("fp32", True)]
    assert bench.with_default_first(settings, default)[0] == default
    assert len(bench.with_default_first(settings, default)) == 2 + cpu_bf16  # added when not measured


def test_trainer_resolves_auto_and_records_it_for_eval(tiny_cfg, tmp_path, cpu_bf16):
    """channels_last: auto in the trainer; the checkpoint records what auto resolved to."""
    from segbench.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("trainer.max_iters=1", "trainer.val_interval=1"), tmp_path)
    assert trainer.channels_last is cpu_bf16 and trainer.precision == ("bf16" if cpu_bf16 else "fp32")
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is cpu_bf16
    trainer.save("last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["speed"] == {"precision": trainer.precision,
                                                              "channels_last": cpu_bf16}


def compose_eval(overrides):
    return compose("eval", overrides)


def test_eval_runs_in_training_precision(tiny_cfg, tmp_path, monkeypatch):
    """`segbench eval` of a run trained in bf16 evaluates in bf16 (the suite's CPU is pinned to the
    AVX2 branch, where `auto` would mean fp32); `precision=` overrides it."""
    from segbench.engine.trainer import Trainer

    Trainer(tiny_cfg("trainer.max_iters=1", "trainer.val_interval=1", "trainer.precision=bf16",
                     "trainer.channels_last=true"), tmp_path).fit()
    seen = []

    def spy(inference, loader, num_classes, *args, **kwargs):
        settings = inference.settings
        seen.append((settings.precision, settings.channels_last, next(inference.model.parameters()).is_contiguous(
            memory_format=torch.channels_last)))
        return evaluator.EvalMatrix(num_classes, device=inference.device)

    monkeypatch.setattr(eval_app, "evaluate_with", spy)
    eval_app.run(compose_eval([f"run={tmp_path}", "device=cpu", "progress=false"]))
    eval_app.run(compose_eval([f"run={tmp_path}", "device=cpu", "progress=false", "precision=fp32",
                                "channels_last=false"]))
    assert seen == [("bf16", True, True), ("fp32", False, False)]


def test_eval_speed_of_a_checkpoint_without_record(cpu_bf16):
    """Older checkpoints hold only the config: its `auto` keys resolve on this machine."""
    run_cfg = OmegaConf.create({"trainer": {"precision": "auto", "channels_last": "auto"}})
    cfg = OmegaConf.create({"precision": None, "channels_last": None})
    expected = ("bf16", True) if cpu_bf16 else ("fp32", False)
    assert loaded.speed(cfg, {}, run_cfg, CPU) == expected
    fp16_run = {"speed": {"precision": "fp16", "channels_last": True}}  # trained on a GPU, scored on a CPU
    assert loaded.speed(cfg, fp16_run, run_cfg, CPU) == (expected[0], True)


class Probe(torch.nn.Module):
    """Records the autocast dtype and inference mode its forward runs under."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
                          torch.is_inference_mode_enabled(), x.is_contiguous(memory_format=torch.channels_last)))
        return {"out": self.conv(x)}


def test_evaluate_uses_given_precision_under_inference_mode():
    loader = [{"image": torch.randn(2, 3, 8, 8), "label": torch.zeros(2, 8, 8, dtype=torch.long)}]
    model = Probe()
    evaluator.evaluate(model, loader, 2, CPU, "bf16", True, progress=False)
    evaluator.evaluate(model, loader, 2, CPU, "fp32", False, progress=False)
    assert model.seen == [(torch.bfloat16, True, True), (False, True, False)]


@pytest.mark.parametrize("head", ["aspp", "ppm"])
def test_pooling_branches_keep_channels_last(head):
    """No silent NCHW in the ASPP / pyramid-pooling concat (a 1x1 map upsampled comes back NCHW),
    nor in the gradient that flows back into the backbone (the global pooling's backward)."""
    from segbench.models.deeplabv3 import ASPP
    from segbench.models.pspnet import PyramidPooling

    module = ASPP(16, [1, 2, 3], out_ch=8) if head == "aspp" else PyramidPooling(16)
    module = module.to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    concat = []
    if head == "aspp":  # the concat is the fusion conv's input
        module.project.register_forward_pre_hook(lambda m, args: concat.append(args[0]))
    out = module(x)
    out.sum().backward()
    for t in concat or [out]:
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_loss_on_channels_last_logits_matches_and_keeps_the_format():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    loss = SegmentationLoss(class_weights=[1.0, 2.0, 0.5, 1.0])
    nhwc = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
    nchw = logits.clone().requires_grad_()
    a, b = loss({"out": nchw}, target), loss({"out": nhwc}, target)
    a.backward(), b.backward()
    assert torch.allclose(a, b) and torch.allclose(nchw.grad, nhwc.grad, atol=1e-7)
    assert nhwc.grad.is_contiguous(memory_format=torch.channels_last)


def test_device_check_dry_run(tmp_path):
    """The GPU check (scripts/device_check.py) at tiny sizes on the CPU, every part of it, so it cannot rot."""
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "device_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "SEGBENCH_CPU_BF16": "0",
                               "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["device_check.json", "device_check.md"]
    result = json.loads((out / "device_check.json").read_text())
    rows = [r for part in ("recipes", "trainer", "loader", "eval_memory", "ms_flip", "vs_torchvision", "sync_bn",
                           "cudnn_benchmark") for r in result[part]]
    assert all(r["status"] == "ok" or r["status"].startswith("skipped (") for r in rows), \
        [r for r in rows if r["status"] != "ok"]
    recipes = {r["recipe"] for r in result["recipes"]}
    assert recipes and all(r["iterations"] >= 1 and r["images_per_s"] > 0 for r in result["recipes"])
    assert {"precision", "channels_last", "peak_memory_bytes", "crop", "batch"} <= set(result["recipes"][0])
    assert {r["setting"] for r in result["recipes"]} == {"as segbench train runs it", "bf16 + channels_last"}
    # the real Trainer: a checkpoint, a resume equal to the uninterrupted run, an evaluation
    assert all(r["resume_exact"] and r["checkpoint_at"] == 3 for r in result["trainer"] if r["status"] == "ok")
    assert result["loader"][0]["loader_items_per_s"] > 0 and len(result["eval_memory"]) == 8
    # two scales + flip in the dry run (timings of 32 x 32 images are noise: only check they exist)
    assert result["ms_flip"] and all(r["views"] == 4 and r["factor"] > 0 for r in result["ms_flip"])
    assert len(result["vs_torchvision"]) == 4
    assert result["sync_bn"][0]["converted_layers"] > 0 and len(result["cudnn_benchmark"]) == 2
    table = (out / "device_check.md").read_text()
    assert all(f"| {name} " in table for name in recipes)


def test_device_check_records_a_failing_row_and_goes_on(tmp_path, monkeypatch):
    """Each row is on disk as soon as it is measured; an error is that row's status, not the end."""
    sys.path.insert(0, str(REPO / "scripts"))
    import device_check

    report = device_check.Report(tmp_path, deadline=float("inf"),
                                 header={"device": "cpu", "torch": "x", "dry_run": True, "iterations": 1, "command": "t"})

    def boom():
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    report.measure("recipes", {"recipe": "a"}, boom, torch.device("cpu"))
    assert json.loads((tmp_path / "device_check.json").read_text())["recipes"][0]["status"].startswith(
        "error: RuntimeError: cuDNN error")
    report.measure("recipes", {"recipe": "b"}, oom, torch.device("cpu"))
    report.deadline = 0
    report.measure("recipes", {"recipe": "c"}, lambda: {"images_per_s": 1.0}, torch.device("cpu"))
    statuses = [r["status"] for r in json.loads((tmp_path / "device_check.json").read_text())["recipes"]]
    assert statuses[1:] == ["OOM", "skipped (time budget)"]
    assert "| a |" in (tmp_path / "device_check.md").read_text()


def test_optimizer_step_is_fused_where_supported():
    """SGD/AdamW get PyTorch's fused step (0.5x the for-loop's time on CPU, measured); an explicit
    fused/foreach choice and optimisers without a fused kernel are left alone."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    cfg = OmegaConf.create({"optim": sgd})
    assert build_optimizer(cfg, model).defaults["fused"] is True
    cfg = OmegaConf.create({"optim": {**sgd, "foreach": False}})
    assert not build_optimizer(cfg, model).defaults.get("fused")
    assert fused_step_options({"_target_": "torch.optim.RMSprop"}, model.parameters()) == {}
    # the same update as the reference loop
    fused, loop = (torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9, weight_decay=0.1,
                                   **kw) for kw in ({"fused": True}, {"foreach": False}))
    for opt in (fused, loop):
        for _ in range(3):
            opt.param_groups[0]["params"][0].grad = torch.tensor([1.0, -2.0, 0.5])
            opt.step()
    assert torch.allclose(fused.param_groups[0]["params"][0], loop.param_groups[0]["params"][0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_unpool_keeps_dtype_and_format_and_matches_torch(channels_last):
    """SegNet's unpooling: the same values and gradients as F.max_unpool2d (odd sizes: ceil-mode
    pools), in bf16 without an fp32 detour, and channels_last in and out, forward and backward."""
    import torch.nn.functional as F

    from segbench.models.layout import max_unpool2d

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 9, 6, dtype=torch.bfloat16).contiguous(memory_format=fmt)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    ours, ref = pooled.detach().clone().requires_grad_(), pooled.detach().float().requires_grad_()
    out = max_unpool2d(ours, indices, (9, 6), 2, 2, ceil_mode=True)
    expected = F.max_unpool2d(ref, indices, 2, 2, output_size=(9, 6))
    grad = torch.randn(2, 3, 9, 6).contiguous(memory_format=fmt)
    out.backward(grad.bfloat16()), expected.backward(grad.bfloat16().float())
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), expected)
    assert torch.equal(ours.grad.float(), ref.grad)
    assert out.is_contiguous(memory_format=fmt) and ours.grad.is_contiguous(memory_format=fmt)
