"""``segbench bench``: what a network costs -- parameters, FLOPs, latency, training step, memory.

    segbench bench model=deeplabv3 model.backbone=resnet50           one model, every setting
    segbench bench model=all                                         the model-zoo table
    segbench bench model=all bench.only=params                       parameter counts, instantly

Conventions (stated in every table's header too; the measuring is :mod:`segbench.engine.measure`):

* FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions,
  matmuls and attention, with **1 multiply-add = 2 FLOPs**; BN, activations, pooling and
  interpolation are not counted (as fvcore / mmcv / ptflops count). Per image, forward, on
  the meta device (no arithmetic is done, so 512x512 for every model takes seconds).
* Latency: forward in eval mode under ``torch.inference_mode``, after ``warmup`` calls;
  median and p90 of ``runs`` timed calls (CUDA synchronised); throughput = batch / median.
* Training step: :func:`segbench.engine.step.train_step` itself (zero_grad, forward, loss,
  backward, SGD step) on random images and labels; median and p90.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one call; on CPU the peak of
  live tensor bytes over one call (``measure.TensorMemoryTracker``, the CPU analogue of the CUDA
  figure: model, gradients, optimiser state and activations), and the process's peak RSS
  (``VmHWM``, reset before the call), which adds oneDNN scratch space and allocator slack.
* Settings: every precision (fp32, bf16 autocast, fp16 autocast on CUDA) and memory format
  (NCHW, channels_last) the device runs natively; bf16 on a CPU without AVX512-BF16/AMX is
  skipped unless asked for (``bench.precisions=[fp32,bf16]``): it runs 10-50x slower there.
  ``bench.compile=true`` adds torch.compile rows (slow to start: compile time is reported).
* The paper column: every ``paper:`` block of conf/experiment/ (:func:`segbench.app.configs.papers`).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.app import configs
from segbench.data.normalization import Normalization
from segbench.engine import build, measure
from segbench.engine.device import cpu_has_native_bf16, resolve_device
from segbench.engine.optim import build_optimizer
from segbench.engine.measure import FLOP_CONVENTION, Setting
from segbench.errors import SegbenchError
from segbench.record import FILE, Bench, edit
from segbench.tables import text_table


# ---- what is measured ---------------------------------------------------------------------------
def settings_for(device: torch.device, bench: DictConfig) -> list[Setting]:
    precisions = bench.precisions
    precisions = measure.native_precisions(device) if precisions in (None, "all") else list(precisions)
    for p in precisions:
        if p == "fp16" and device.type != "cuda":
            raise SegbenchError("bench.precisions: fp16 needs CUDA; on CPU use fp32 or bf16")
    formats = list(bench.memory_formats)
    bad = set(formats) - {"nchw", "channels_last"}
    if bad:
        raise SegbenchError(f"bench.memory_formats: unknown {sorted(bad)}; use nchw and/or channels_last")
    compiles = [False, True] if bench.compile else [False]
    return [Setting(p, f == "channels_last", c) for c in compiles for p in precisions for f in formats]


def with_default_first(settings: list[Setting], default: Setting) -> list[Setting]:
    """``settings`` with ``default`` (what ``segbench train`` would run) moved, or added, to the front."""
    return [default] + [s for s in settings if s != default]


def model_names(cfg: DictConfig) -> list[str]:
    """The networks of the zoo table (``model=all``, or ``bench.models`` of them); [] for one model."""
    if not cfg.model.get("all", False):
        return []
    names = configs.available("model")
    if cfg.bench.get("models"):
        unknown = set(cfg.bench.models) - set(names)
        if unknown:
            raise SegbenchError(f"bench.models: unknown {sorted(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in set(cfg.bench.models)]
    return names


# ---- one model ----------------------------------------------------------------------------------
def measure_inference(model, images, setting: Setting, device: torch.device, warmup: int, runs: int,
                      memory: bool = True) -> dict:
    forward = measure.infer_step(model, images, setting)
    stats = measure.time_calls(forward, device, warmup, runs)
    stats["images_per_s"] = images.shape[0] / stats["median_s"]
    if memory:
        stats.update(measure.peak_memory(forward, device, existing=[*model.parameters(), *model.buffers()]))
    return stats


def measure_training(model, criterion, optimizer, images, labels, setting: Setting, device: torch.device,
                     warmup: int, runs: int, memory: bool = True, normalization=None) -> dict:
    step = measure.make_train_step(model, criterion, optimizer, images, labels, setting, normalization)
    stats = measure.time_calls(step, device, max(1, warmup), runs)  # one warm-up at least: creates optimiser state
    stats["images_per_s"] = images.shape[0] / stats["median_s"]
    if memory:
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        stats.update(measure.peak_memory(step, device, existing=[*model.parameters(), *model.buffers(), *state, *grads]))
    return stats


def bench_model(name: str, cfg: DictConfig, settings: list[Setting], device: torch.device) -> dict:
    """Everything ``bench`` measures for one model config (``cfg.model``)."""
    b = cfg.bench
    size = tuple(int(s) for s in b.input_size)
    record = {"model": name, "config": OmegaConf.to_container(cfg.model, resolve=True),
              "input_size": list(size), "flop_convention": FLOP_CONVENTION}
    make = lambda: build.build_model(cfg)  # the trainer's own builder
    record["params"] = build.count_parameters(measure.build_on("meta", make))
    if b.only == "params":
        return record
    record["flops_per_image"], record["flops_counted_on"] = measure.flops_per_image(make, size)
    if b.only == "flops":
        return record
    rows = []
    for i, setting in enumerate(settings):
        row = {"setting": setting.name, **asdict(setting), "default": i == 0}
        torch.manual_seed(int(cfg.trainer.seed))
        model = measure.prepare(make(), setting, device)
        for batch in b.batch_sizes:
            images, _ = measure.random_batch(int(batch), size, int(cfg.data.num_classes), device)
            row[f"infer_bs{batch}"] = measure_inference(model, images, setting, device, int(b.warmup), int(b.runs),
                                                        memory=bool(b.memory))
        if b.train:  # the loader's uint8 batch, normalised in the step as in training
            images, labels = measure.loader_batch(int(b.train_batch_size), size, int(cfg.data.num_classes), device)
            optimizer = build_optimizer(cfg, getattr(model, "_orig_mod", model))
            criterion = instantiate(cfg.loss).to(device)
            row["train"] = measure_training(model, criterion, optimizer, images, labels, setting, device,
                                            int(b.warmup), int(b.train_runs), memory=bool(b.memory),
                                            normalization=Normalization.from_data_config(cfg.data))
        rows.append(row)
        del model
    record["settings"] = rows
    return record


def published_results(papers: dict[str, dict]) -> dict[str, list[str]]:
    """``model -> ["r101_voc_aug 79.77", ...]`` from :func:`configs.papers` (``experiment -> paper block``).

    Each entry is the recipe name less the model prefix (backbone + dataset), the value, the
    metric when it is not mIoU, and ``test`` for test-server numbers (val otherwise).
    """
    found: dict[str, list[str]] = {}
    for recipe, paper in papers.items():
        model = paper["model"]
        label = recipe[len(model) + 1:] if recipe.startswith(model + "_") else recipe
        metric = str(paper.get("metric", "mIoU"))
        text = f"{label} {paper['value']}" + ("" if metric == "mIoU" else f" {metric}")
        if "test" in str(paper.get("split", "")).lower():
            text += " test"
        found.setdefault(model, []).append(text)
    return found


# ---- tables -------------------------------------------------------------------------------------
def _m(value) -> str:
    return "" if value is None else f"{value / 1e6:.2f}"


def _ms(stats: dict | None, key: str = "median_s") -> str:
    return "" if not stats or stats.get(key) is None else f"{1e3 * stats[key]:.1f}"


def _mb(value) -> str:
    return "" if value is None else f"{value / 2**20:.0f}"


def settings_table(record: dict) -> str:
    header = ["setting"]
    batches = [k for k in record["settings"][0] if k.startswith("infer_bs")] if record.get("settings") else []
    for key in batches:
        bs = key[len("infer_bs"):]
        header += [f"bs{bs} ms (p90)", f"bs{bs} img/s", f"bs{bs} MiB"]
    has_train = bool(record.get("settings")) and "train" in record["settings"][0]
    if has_train:
        header += ["train step ms (p90)", "train img/s", "train MiB", "train RSS MiB"]
    rows = []
    for row in record.get("settings", []):
        cells = [row["setting"] + (" (default)" if row.get("default") else "")]
        for key in batches:
            s = row[key]
            cells += [f"{_ms(s)} ({_ms(s, 'p90_s')})", f"{s['images_per_s']:.2f}", _mb(s.get("peak_bytes"))]
        if has_train:
            s = row["train"]
            cells += [f"{_ms(s)} ({_ms(s, 'p90_s')})", f"{s['images_per_s']:.2f}", _mb(s.get("peak_bytes")),
                      _mb(s.get("peak_rss_bytes"))]
        rows.append(cells)
    return text_table(header, rows)


def zoo_table(records: list[dict], papers: dict[str, list[str]]) -> str:
    size = records[0].get("input_size") if records else None
    flops_col = f"GFLOPs@{size[0]}x{size[1]}" if size else "GFLOPs"
    header = ["model", "params M", "backbone M", "head M", flops_col]
    timed = any(r.get("settings") for r in records)
    trained = timed and any("train" in (r.get("settings") or [{}])[0] for r in records)
    if timed:
        header += ["latency ms bs1", "infer MiB"] + (["train step ms", "train MiB"] if trained else [])
    header += ["paper (recipe: value)"]
    rows = []
    for r in records:
        p = r["params"]
        cells = [r["model"], _m(p["total"]), _m(p["backbone"]), _m(p["head"]),
                 "" if r.get("flops_per_image") is None else f"{r['flops_per_image'] / 1e9:.1f}"]
        if timed:
            s = (r.get("settings") or [{}])[0]
            infer = next((v for k, v in s.items() if k.startswith("infer_bs")), None)
            cells += [_ms(infer), _mb((infer or {}).get("peak_bytes"))]
            if trained:
                cells += [_ms(s.get("train")), _mb((s.get("train") or {}).get("peak_bytes"))]
        cells.append("; ".join(papers.get(r["model"], [])))
        rows.append(cells)
    return text_table(header, rows)


def one_model_summary(record: dict) -> str:
    p = record["params"]
    return (f"{record['model']}: {_m(p['total'])} M parameters ({_m(p['trainable'])} M trainable; backbone "
            f"{_m(p['backbone'])} M, head {_m(p['head'])} M)"
            + (f", {record['flops_per_image'] / 1e9:.2f} GFLOPs per image" if "flops_per_image" in record else ""))


# ---- the verb -----------------------------------------------------------------------------------
def write_results(run_dir: str | Path, results: dict, config: dict) -> Path:
    """Where ``bench`` keeps what it measured: the run dir's ``run.json`` (:mod:`segbench.record`)."""
    with edit(run_dir, kind="bench", status="finished", config=config) as record:
        record.bench = Bench(**results)
    return Path(run_dir) / FILE


def run(cfg: DictConfig) -> dict:
    """``segbench bench``: print the tables, write the results in the run dir (:func:`write_results`)."""
    b = cfg.bench
    if b.only not in (None, "params", "flops"):
        raise SegbenchError(f"bench.only must be params, flops or null, got '{b.only}'")
    device = resolve_device(str(b.device))
    torch.backends.cudnn.benchmark = bool(cfg.trainer.cudnn_benchmark)
    names = model_names(cfg)
    default = measure.default_setting(device, cfg.trainer)
    if names:  # the zoo: one row per network, in train's own setting
        settings = [default]
        models = [(n, configs.group("model", n, config_name="bench")) for n in names]
    else:
        settings = with_default_first(settings_for(device, b), default)
        models = [(HydraConfig.get().runtime.choices.get("model", "model"), cfg.model)]
    emulated_bf16 = device.type != "cuda" and not cpu_has_native_bf16() and b.precisions in (None, "all")
    skipped = [("bf16 (this CPU has no AVX512-BF16/AMX: emulated, 10-50x slower; bench.precisions=[fp32,bf16] "
                "measures it anyway)")] if emulated_bf16 else []

    records = []
    for name, model_cfg in models:
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.model = model_cfg  # its ${data.num_classes} now resolves against this run's data
        start = time.perf_counter()
        record = bench_model(name, run_cfg, settings, device)
        record["bench_time_s"] = round(time.perf_counter() - start, 1)
        records.append(record)
        if names:
            print(f"  {name}: done in {record['bench_time_s']:.0f} s", flush=True)

    device_name = measure.describe_device(device)
    print(f"segbench bench on {device_name}, input {b.input_size[0]}x{b.input_size[1]}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
          f"FLOPs: {FLOP_CONVENTION}. Times: median (p90) of {b.runs} runs after {b.warmup} warm-up; "
          f"training step = step.train_step, batch {b.train_batch_size}, SGD.\n"
          "Memory: " + ("CUDA max_memory_allocated" if device.type == "cuda"
                        else "peak live tensor bytes (run.json: also process peak RSS)"))
    if skipped:
        print("skipped: " + "; ".join(skipped))
    papers = published_results(configs.papers())
    if names:
        print(zoo_table(records, papers))
    else:
        print(one_model_summary(records[0]))
        if records[0].get("settings"):
            print(settings_table(records[0]))
    result = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "bench": OmegaConf.to_container(b, resolve=True), "skipped": skipped, "models": records,
              "paper": {r["model"]: papers.get(r["model"], []) for r in records}}
    written = write_results(HydraConfig.get().runtime.output_dir, result, OmegaConf.to_container(cfg, resolve=True))
    print(f"wrote {written}")
    return result
