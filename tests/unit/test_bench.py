"""`segbench bench`: parameter counts, FLOPs, the memory tracker, precision defaults, the tables."""
import copy
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn

from segbench import api, bench
from segbench.engine import build
from segbench.engine.device import (
    cpu_has_native_bf16,
    detect_cpu_bf16,
    resolve_precision,
)
from segbench.errors import SegbenchError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: intra-op threads mostly wait for each other (a
    descheduled peer stalls every parallel region), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_bench(*overrides: str, hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        return compose(config_name="bench", overrides=list(overrides), return_hydra_config=hydra_cfg)


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_flops_of_one_conv_by_hand():
    # 8 output channels x 16x16 positions x (3 in x 3x3) multiply-adds, 2 FLOPs each; bias not counted.
    images = torch.randn(1, 3, 16, 16)
    assert bench.count_flops(OneConv(), images) == 2 * (8 * 16 * 16) * (3 * 3 * 3)
    # Per image: a batch of 4 costs 4x.
    assert bench.count_flops(OneConv(), torch.randn(4, 3, 16, 16)) == 4 * 2 * 8 * 16 * 16 * 27
    # Training: + the weight gradient, one more conv-sized product (the input needs no gradient).
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    assert bench.count_flops(OneConv(), images, train=True, labels=labels) == 2 * 2 * 8 * 16 * 16 * 27


def test_flops_on_meta_equal_flops_on_cpu():
    cfg = compose_bench("model=unet_small")
    flops, where = bench.flops_per_image(cfg.model, (32, 32))
    assert where == "meta"
    model = bench.build_model_cfg(cfg.model)
    assert flops == bench.count_flops(model, torch.randn(2, 3, 32, 32)) // 2


@pytest.mark.parametrize("name, num_classes, paper", [("segnet", 11, 29.45e6), ("deeplabv1", 21, 20.5e6)])
def test_parameter_counts_match_build_and_papers(name, num_classes, paper):
    cfg = compose_bench(f"model={name}", f"data.num_classes={num_classes}")
    row = build.count_parameters(bench.build_model_cfg(cfg.model, "meta"))  # as bench counts them
    assert row["total"] == pytest.approx(paper, rel=0.005)
    assert row["backbone"] + row["head"] == row["total"]
    if name == "deeplabv1":  # and equal to build.count_parameters of the real thing (small: 20M floats)
        real = build.count_parameters(bench.build_model_cfg(cfg.model))
        assert row == real


def test_tensor_memory_tracker_counts_live_bytes():
    keep = torch.empty(100)  # existing: counted in the baseline
    with bench.TensorMemoryTracker(existing=[keep]) as tracker:
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B -> 400 + 12000 live
        view = b[:10]  # same storage: not counted twice
        del a
        c = torch.empty(500)  # 2000 B -> 400 + 10000
        del c, view
    assert tracker.baseline == 400
    assert tracker.peak == 400 + 12000
    assert tracker.current == 400 + 8000
    del b


class Block(nn.Module):  # a residual block with BN, as a ResNet bottleneck
    def __init__(self, ch):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


class TinyTrunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(Block(8), Block(8), Block(8))

    def forward(self, x):
        return self.layer1(self.stem(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyTrunk()
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return {"out": self.head(self.backbone(x))}


def test_grad_checkpoint_recomputes_the_backbone_and_keeps_the_step_exact():
    """Same loss, gradients and BN statistics with and without checkpointing, and the blocks
    really run twice (once more in backward). The memory saving is measured at a realistic size
    by benchmarks/memory.py (at toy sizes weights and conv scratch buffers dominate)."""
    images, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    torch.manual_seed(0)
    reference = TinyResNet().train()
    results = []
    for checkpointed in (False, True):
        model = copy.deepcopy(reference)
        if checkpointed:
            assert build.enable_grad_checkpoint(model) == 1 + 3  # the stem, then block by block
        calls = []
        model.backbone.layer1[1].conv.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)  # same dropout masks
        loss = torch.nn.functional.cross_entropy(model(images)["out"], labels)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.item(), grads, model.state_dict(), len(calls)))
    (loss_a, grads_a, state_a, calls_a), (loss_b, grads_b, state_b, calls_b) = results
    assert (calls_a, calls_b) == (1, 2)
    assert loss_a == loss_b
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert state_a.keys() == state_b.keys()  # same module names: checkpoints stay interchangeable
    for key in state_a:  # BN running statistics updated once, not twice
        assert torch.equal(state_a[key], state_b[key]), key


def test_grad_checkpoint_flat_vgg_trunk_in_segments():
    torch.manual_seed(0)
    model = api.build_model("deeplabv1", 4, base_channels=8, fc_channels=16).train()
    assert build.enable_grad_checkpoint(model) == 5  # one segment per pooling layer
    model(torch.randn(2, 3, 32, 32))["out"].sum().backward()  # in-place ReLUs survive recomputation


def test_grad_checkpoint_needs_a_backbone():
    with pytest.raises(Exception, match="needs a model with a .backbone"):
        build.enable_grad_checkpoint(OneConv())


def test_precision_auto_follows_the_cpu_capability(cpu_bf16):
    cpu = torch.device("cpu")
    assert cpu_has_native_bf16() is cpu_bf16
    assert resolve_precision(cpu, "auto") == ("bf16" if cpu_bf16 else "fp32")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert bench.native_precisions(cpu) == (["fp32", "bf16"] if cpu_bf16 else ["fp32"])


def test_cpu_capability_override_is_checked(monkeypatch):
    monkeypatch.setenv("SEGBENCH_CPU_BF16", "maybe")
    with pytest.raises(SegbenchError, match="SEGBENCH_CPU_BF16"):
        cpu_has_native_bf16()
    monkeypatch.delenv("SEGBENCH_CPU_BF16")
    assert cpu_has_native_bf16() is detect_cpu_bf16()  # the machine's own answer


def test_published_results_read_from_recipes(tmp_path):
    (tmp_path / "deeplabv3_r101_voc_aug.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: deeplabv3\n  - override /data: voc_aug\n"
        "paper:\n  metric: mIoU\n  value: 79.77\n  split: VOC2012 val\n")
    (tmp_path / "unet_isbi.yaml").write_text(
        "defaults:\n  - override /model: unet\npaper:\n  metric: pixel_error\n  value: 0.0611\n  split: ISBI test\n")
    (tmp_path / "broken.yaml").write_text("paper: [unclosed\n")
    found = bench.published_results(tmp_path)
    assert found == {"deeplabv3": ["r101_voc_aug 79.77"], "unet": ["isbi 0.0611 pixel_error test"]}


def run_bench_in_process(tmp_path, *overrides):
    cfg = compose_bench(*overrides, hydra_cfg=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    result = bench.run(cfg)
    written = json.loads((tmp_path / "bench.json").read_text())  # the file holds every measured row
    assert written["models"] == json.loads(json.dumps(result["models"]))
    return result


def conv_macs(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Multiply-adds of every convolution, counted from the layer shapes (independent of bench)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kernel = module.weight.shape[2] * module.weight.shape[3]
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel meets out_ch x k x k weights
            total += inputs[0].numel() * module.out_channels // module.groups * kernel
        else:
            total += output.numel() * module.in_channels // module.groups * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    model.eval()
    with torch.no_grad():
        model(image)
    for handle in handles:
        handle.remove()
    return total


def test_bench_one_model_every_setting(tmp_path, capsys, cpu_bf16):
    result = run_bench_in_process(
        tmp_path, "model=unet_small", "model.base_channels=4", "bench.input_size=[32,32]", "bench.batch_sizes=[1,2]",
        "bench.warmup=0", "bench.runs=2", "bench.train_runs=1")
    record = result["models"][0]
    # the first row is what `segbench train` runs here (trainer.precision/channels_last: auto)
    expected = (["bf16 channels_last", "fp32 NCHW", "fp32 channels_last", "bf16 NCHW"] if cpu_bf16
                else ["fp32 NCHW", "fp32 channels_last"])
    assert [row["setting"] for row in record["settings"]] == expected
    assert [row["default"] for row in record["settings"]] == [True] + [False] * (len(expected) - 1)
    model = bench.build_model_cfg(compose_bench("model=unet_small", "model.base_channels=4").model)
    assert record["params"]["total"] == sum(p.numel() for p in model.parameters()) > 0
    assert record["flops_per_image"] == 2 * conv_macs(model, torch.randn(1, 3, 32, 32))  # 1 multiply-add = 2 FLOPs
    for row in record["settings"]:
        assert row["infer_bs2"]["runs"] == 2 and row["infer_bs2"]["median_s"] > 0
        assert row["train"]["peak_bytes"] > row["infer_bs1"]["peak_bytes"] > 0
    out = capsys.readouterr().out
    assert "1 multiply-add = 2 FLOPs" in out and "fp32 channels_last" in out and "bs2 img/s" in out
    assert f"\n{expected[0]} (default) " in out


def test_bench_params_only_lists_every_model(tmp_path, capsys):
    result = run_bench_in_process(tmp_path, "model=all", "bench.only=params")
    assert [r["model"] for r in result["models"]] == api.available("model")
    assert "unet_small" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_model_all_on_cpu(cli, tmp_path):
    """Every network, timed, at a tiny size: one table, one bench.json."""
    proc = cli("bench", "model=all", "bench.input_size=[32,32]", "bench.warmup=0", "bench.runs=1",
               "bench.train=false", "bench.memory=false", timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("model "):]
    for name in api.available("model"):
        assert f"\n{name} " in table
    written = list((tmp_path / "runs" / "bench" / "all").glob("*/bench.json"))
    assert len(written) == 1
    records = json.loads(written[0].read_text())["models"]
    assert all(r["settings"][0]["infer_bs1"]["median_s"] > 0 for r in records)
