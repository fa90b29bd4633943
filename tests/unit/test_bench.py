"""`segbench bench` and its measuring library (segbench.engine.measure): parameter counts, FLOPs,
the timer, the memory tracker, precision defaults, the tables, the paper column."""
import importlib
import json
import time

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from torch import nn

from segbench import api
from segbench.app import aggregate
from segbench.app import bench, configs
from segbench.engine import build, measure
from segbench.engine.device import (
    cpu_has_native_bf16,
    detect_cpu_bf16,
    resolve_precision,
)
from segbench.errors import SegbenchError
from segbench.record import RunRecord
from tests.conftest import REPO, compose


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: intra-op threads mostly wait for each other (a
    descheduled peer stalls every parallel region), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_bench(*overrides: str, hydra_cfg: bool = False):
    return compose("bench", overrides, hydra_cfg=hydra_cfg)


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_flops_of_one_conv_by_hand():
    # 8 output channels x 16x16 positions x (3 in x 3x3) multiply-adds, 2 FLOPs each; bias not counted.
    images = torch.randn(1, 3, 16, 16)
    assert measure.count_flops(OneConv(), images) == 2 * (8 * 16 * 16) * (3 * 3 * 3)
    # Per image: a batch of 4 costs 4x.
    assert measure.count_flops(OneConv(), torch.randn(4, 3, 16, 16)) == 4 * 2 * 8 * 16 * 16 * 27
    # Training: + the weight gradient, one more conv-sized product (the input needs no gradient).
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    assert measure.count_flops(OneConv(), images, train=True, labels=labels) == 2 * 2 * 8 * 16 * 16 * 27


def test_flops_on_meta_equal_flops_on_cpu():
    cfg = compose_bench("model=unet_small")
    flops, where = measure.flops_per_image(lambda: build.build_model(cfg), (32, 32))
    assert where == "meta"
    model = build.build_model(cfg)
    assert flops == measure.count_flops(model, torch.randn(2, 3, 32, 32)) // 2


@pytest.mark.parametrize("name, num_classes, paper", [("segnet", 11, 29.45e6), ("deeplabv1", 21, 20.5e6)])
def test_parameter_counts_match_build_and_papers(name, num_classes, paper):
    cfg = compose_bench(f"model={name}", f"data.num_classes={num_classes}")
    row = build.count_parameters(measure.build_on("meta", lambda: build.build_model(cfg)))  # as bench counts them
    assert row["total"] == pytest.approx(paper, rel=0.005)
    assert row["backbone"] + row["head"] == row["total"]
    if name == "deeplabv1":  # and equal to build.count_parameters of the real thing (small: 20M floats)
        real = build.count_parameters(build.build_model(cfg))
        assert row == real


def test_tensor_memory_tracker_counts_live_bytes():
    keep = torch.empty(100)  # existing: counted in the baseline
    with measure.TensorMemoryTracker(existing=[keep]) as tracker:
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


def test_precision_auto_follows_the_cpu_capability(cpu_bf16):
    cpu = torch.device("cpu")
    assert cpu_has_native_bf16() is cpu_bf16
    assert resolve_precision(cpu, "auto") == ("bf16" if cpu_bf16 else "fp32")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert measure.native_precisions(cpu) == (["fp32", "bf16"] if cpu_bf16 else ["fp32"])


def test_cpu_capability_override_is_checked(monkeypatch):
    monkeypatch.setenv("SEGBENCH_CPU_BF16", "maybe")
    with pytest.raises(SegbenchError, match="SEGBENCH_CPU_BF16"):
        cpu_has_native_bf16()
    monkeypatch.delenv("SEGBENCH_CPU_BF16")
    assert cpu_has_native_bf16() is detect_cpu_bf16()  # the machine's own answer


def test_published_results_label_metric_and_split():
    papers = {"deeplabv3_r101_voc_aug": {"metric": "mIoU", "value": 79.77, "split": "VOC2012 val", "model": "deeplabv3"},
              "unet_isbi": {"metric": "pixel_error", "value": 0.0611, "split": "ISBI test", "model": "unet"},
              "custom_recipe": {"value": 50.0, "split": "val", "model": "fcn8s"}}  # name without the model prefix
    assert bench.published_results(papers) == {"deeplabv3": ["r101_voc_aug 79.77"],
                                               "unet": ["isbi 0.0611 pixel_error test"],
                                               "fcn8s": ["custom_recipe 50.0"]}


def run_bench_in_process(tmp_path, *overrides):
    cfg = compose_bench(*overrides, hydra_cfg=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    result = bench.run(cfg)
    record = RunRecord.load(tmp_path)  # run.json holds every measured row
    assert record.kind == "bench" and record.status == "finished" and record.config["bench"] == result["bench"]
    assert record.bench.models == json.loads(json.dumps(result["models"]))
    assert aggregate.rows(tmp_path) == []  # a measurement, not a training run: runs/report leave it out
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
    model = build.build_model(compose_bench("model=unet_small", "model.base_channels=4"))
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


# model -> a recipe of it; the last one gets its model through its base recipe (no `/model` line).
PAPER_CASES = [("unet", "unet_isbi"), ("deeplabv3", "deeplabv3_r101_voc_aug"),
               ("pspnet", "pspnet_r101_cityscapes"), ("deeplabv1", "deeplabv1_vgg16_voc_aug_crf")]


def test_zoo_paper_column_is_what_the_experiment_files_say(tmp_path, capsys):
    result = run_bench_in_process(tmp_path, "model=all", "bench.only=params")
    table = capsys.readouterr().out
    for model, recipe in PAPER_CASES:
        paper = OmegaConf.load(configs.CONF_DIR / "experiment" / f"{recipe}.yaml").paper  # the file itself
        metric = paper.get("metric", "mIoU")  # (the CRF recipe states only its value; its base says mIoU, val)
        cell = f"{recipe[len(model) + 1:]} {paper.value}" + ("" if metric == "mIoU" else f" {metric}")
        cell += " test" if "test" in paper.get("split", "").lower() else ""
        assert cell in result["paper"][model]
        row = next(line for line in table.splitlines() if line.startswith(f"{model} "))
        assert row.rstrip().endswith("; ".join(result["paper"][model])) and cell in row
    # every paper block appears once, in the row of the model its recipe composes to
    assert sum(len(cells) for cells in result["paper"].values()) == len(configs.papers())


def test_time_calls_counts_warmup_and_runs_and_takes_the_median():
    calls = []

    def nap():
        calls.append(1)
        time.sleep(0.02)

    stats = measure.time_calls(nap, torch.device("cpu"), warmup=2, runs=5)
    assert len(calls) == 2 + 5 and stats["runs"] == 5
    assert 0.02 <= stats["min_s"] <= stats["median_s"] <= stats["p90_s"] < 2.0  # a loaded machine only adds
    assert stats["first_s"] >= 0.02
    assert measure.time_calls(nap, torch.device("cpu"), warmup=0, runs=1)["first_s"] is None
    assert measure.summarize([0.5, 0.1, 0.3, 0.2, 0.4], first=9.0) == {
        "median_s": 0.3, "p90_s": 0.5, "min_s": 0.1, "runs": 5, "first_s": 9.0}
    assert measure.summarize([float(i) for i in range(1, 11)])["p90_s"] == 9.0


def test_matmul_rate_through_benchmark_timer_on_our_threads():
    torch.set_num_threads(2)
    assert measure.timer(lambda: None).timeit(1).task_spec.num_threads == 2  # not Timer's default of 1
    rate = measure.matmul_rate(torch.float32, torch.device("cpu"), size=64, min_time=0.05)
    assert 1e6 < rate < 1e14  # FLOP/s of 2 x 64^3 per call
    assert torch.get_num_threads() == 2


def test_scripts_measure_through_the_library():
    """device_check and benchmarks/ build models with segbench's one builder and time its train step
    through engine.measure, instead of copies of their own."""
    sources = {p.name: p.read_text() for p in [REPO / "scripts" / "device_check.py", *(REPO / "benchmarks").glob("*.py")]}
    on_real_data = {"camvid_learning_curve.py", "eval_alignment.py"}  # they train on real frames, not a timed step
    for name, text in sources.items():
        assert "def segbench_model" not in text, f"{name}: build through segbench's builder"
        if name not in on_real_data:  # (their torch.randint picks frames and crop corners, not a random batch)
            assert "torch.randint(" not in text, f"{name}: measure.random_batch"
            assert "GradScaler(" not in text, f"{name}: time measure.make_train_step, not a copy of it"


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "benchmarks").glob("*.py")))
def test_benchmark_scripts_import(script, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = importlib.import_module(script)
    assert callable(getattr(module, "main", None)) or script == "common"


@pytest.mark.slow
def test_bench_model_all_on_cpu(cli, tmp_path):
    """Every network, timed, at a tiny size: one table, one run.json."""
    proc = cli("bench", "model=all", "bench.input_size=[32,32]", "bench.warmup=0", "bench.runs=1",
               "bench.train=false", "bench.memory=false", timeout=600, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("model "):]
    for name in api.available("model"):
        assert f"\n{name} " in table
    written = list((tmp_path / "runs" / "bench" / "all").glob("*/run.json"))
    assert len(written) == 1
    records = RunRecord.load(written[0].parent).bench.models
    assert all(r["settings"][0]["infer_bs1"]["median_s"] > 0 for r in records)
