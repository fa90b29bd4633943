"""``segbench bench``: what a network costs -- parameters, FLOPs, latency, training step, memory.

    segbench bench model=deeplabv3 model.backbone=resnet50           one model, every setting
    segbench bench model=all                                         the model-zoo table
    segbench bench model=all bench.only=params                       parameter counts, instantly

Conventions (stated in every table's header too):

* FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions,
  matmuls and attention, with **1 multiply-add = 2 FLOPs**; BN, activations, pooling and
  interpolation are not counted (as fvcore / mmcv / ptflops count). Per image, forward, on
  the meta device (no arithmetic is done, so 512x512 for every model takes seconds).
* Latency: forward in eval mode under ``torch.inference_mode``, after ``warmup`` calls;
  median and p90 of ``runs`` timed calls (CUDA synchronised); throughput = batch / median.
* Training step: :func:`segbench.engine.step.train_step` itself (zero_grad, forward, loss,
  backward, SGD step) on random images and labels; median and p90.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one call; on CPU the peak of
  live tensor bytes over one call (:class:`TensorMemoryTracker`, the CPU analogue of the CUDA
  figure: model, gradients, optimiser state and activations), and the process's peak RSS
  (``VmHWM``, reset before the call), which adds oneDNN scratch space and allocator slack.
* Settings: every precision (fp32, bf16 autocast, fp16 autocast on CUDA) and memory format
  (NCHW, channels_last) the device runs natively; bf16 on a CPU without AVX512-BF16/AMX is
  skipped unless asked for (``bench.precisions=[fp32,bf16]``): it runs 10-50x slower there.
  ``bench.compile=true`` adds torch.compile rows (slow to start: compile time is reported).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import statistics
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from segbench import api
from segbench.engine import build
from segbench.engine.device import autocast, cpu_has_native_bf16, resolve_channels_last, resolve_device, resolve_precision
from segbench.engine.optim import build_optimizer
from segbench.io import write_json
from segbench.errors import SegbenchError
from segbench.tables import text_table

FLOP_CONVENTION = "1 multiply-add = 2 FLOPs; conv/matmul only (FlopCounterMode)"


# ---- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        fmt = "channels_last" if self.channels_last else "NCHW"
        return f"{self.precision} {fmt}" + (" compiled" if self.compile else "")


def native_precisions(device: torch.device) -> list[str]:
    """Precisions with hardware support on ``device`` (what ``bench.precisions=all`` means)."""
    if device.type == "cuda":
        return ["fp32"] + (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"]
    return ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])


def settings_for(device: torch.device, bench: DictConfig) -> list[Setting]:
    precisions = bench.precisions
    precisions = native_precisions(device) if precisions in (None, "all") else list(precisions)
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


def default_setting(device: torch.device, trainer: DictConfig) -> Setting:
    """The setting ``segbench train`` would use with this trainer config (``auto`` resolved
    by the same functions the trainer calls)."""
    precision = resolve_precision(device, str(trainer.precision))
    return Setting(precision, resolve_channels_last(device, precision, trainer.get("channels_last", "auto")),
                   bool(trainer.get("compile", False)))


# ---- measurement primitives (benchmarks/*.py use these too) ---------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, warmup: int, runs: int) -> dict:
    """Seconds per call of ``fn()``: the first call's time, then median / p90 / min over ``runs``."""
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return summarize(times, first)


def summarize(times: list[float], first: float | None = None) -> dict:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)] if ordered else math.nan
    return {"median_s": statistics.median(ordered) if ordered else math.nan, "p90_s": p90,
            "min_s": ordered[0] if ordered else math.nan, "runs": len(ordered), "first_s": first}


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of live tensor storage while active (CPU or any device).

    Every storage an op produces is counted until it is freed (a weak reference fires), so
    ``peak`` is what a caching allocator's ``max_memory_allocated`` would report, without its
    rounding. Tensors that exist before entering (weights, gradients, optimiser state) are
    counted if passed as ``existing``.
    """

    def __init__(self, existing=(), include_meta: bool = False):
        super().__init__()
        self.include_meta = include_meta  # count meta tensors too: exact sizes, no arithmetic
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.current = self.peak = 0
        for tensor in existing:
            self._track(tensor)
        self.baseline = self.current

    def _track(self, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or (tensor.device.type == "meta" and not self.include_meta):
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested, functional wrappers
            return
        key = id(storage)
        if key in self.live:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in torch.utils._pytree.tree_leaves(out):
            self._track(item)
        return out


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn, device: torch.device, existing=()) -> dict:
    """Peak memory of one call of ``fn()`` (bytes): tensors, and on CPU the process RSS too."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device), "peak_rss_bytes": None}
    if device.type == "meta":  # tensor sizes without arithmetic: what the run would hold
        with TensorMemoryTracker(existing, include_meta=True) as tracker:
            fn()
        return {"peak_bytes": tracker.peak, "peak_rss_bytes": None}
    fresh = reset_peak_rss()
    with TensorMemoryTracker(existing) as tracker:
        fn()
    rss = _read_status("VmHWM") if fresh else None
    return {"peak_bytes": tracker.peak, "peak_rss_bytes": rss}


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 1024, min_time: float = 1.0) -> float:
    """Sustained FLOP/s of a square ``size`` GEMM in ``dtype`` (1 multiply-add = 2 FLOPs)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return 2 * size**3 * calls / elapsed


# ---- models ---------------------------------------------------------------------------------------
def build_model_cfg(model_cfg: DictConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Instantiate a model config; ``device="meta"`` builds it without allocating or initialising."""
    resolved = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else model_cfg
    with torch.device(device):
        return build.build_model(OmegaConf.create({"model": resolved}))


def count_flops(model: torch.nn.Module, images: torch.Tensor, train: bool = False,
                labels: torch.Tensor | None = None) -> int:
    """FLOPs of one forward (``train=False``, eval mode) or forward + backward (``train=True``)."""
    was_training = model.training
    model.train(train)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if train:
                out = model(images)["out"]
                loss = torch.nn.functional.cross_entropy(out.float(), labels, ignore_index=255)
                loss.backward()
            else:
                with torch.no_grad():
                    model(images)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def flops_per_image(model_cfg: DictConfig, size: tuple[int, int], train: bool = False) -> tuple[int, str]:
    """Per-image FLOPs at ``size``, counted on the meta device (falls back to a real CPU run
    if a layer has no meta implementation). Returns (FLOPs, device used)."""
    batch = 2  # train mode BN / image pooling need more than one value per channel
    for device in ("meta", "cpu"):
        try:
            model = build_model_cfg(model_cfg, device)
            images = torch.randn(batch, 3, *size, device=device)
            labels = torch.zeros(batch, *size, dtype=torch.long, device=device)
            return count_flops(model, images, train, labels) // batch, device
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def published_results(experiment_dir: Path = api.CONF_DIR / "experiment") -> dict[str, list[str]]:
    """``model -> ["r101_voc_aug 79.77", ...]`` from the ``paper:`` blocks of conf/experiment/.

    Each entry is the recipe name less the model prefix (backbone + dataset), the value, the
    metric when it is not mIoU, and ``test`` for test-server numbers (val otherwise).
    """
    found: dict[str, list[str]] = {}
    for path in sorted(Path(experiment_dir).glob("*.yaml")):
        try:
            cfg = OmegaConf.load(path)
        except Exception:  # noqa: BLE001 - a half-written recipe must not break the table
            continue
        paper = cfg.get("paper")
        if not isinstance(paper, DictConfig) or paper.get("value") is None:
            continue
        model = None
        for entry in cfg.get("defaults", []) or []:
            if isinstance(entry, DictConfig):
                for key, value in entry.items():
                    if re.sub(r"^(override\s+)?/?", "", str(key)) == "model":
                        model = str(value)
        if model is None:
            continue
        label = path.stem[len(model) + 1:] if path.stem.startswith(model + "_") else path.stem
        metric = str(paper.get("metric", "mIoU"))
        text = f"{label} {paper.value}" + ("" if metric == "mIoU" else f" {metric}")
        if "test" in str(paper.get("split", "")).lower():
            text += " test"
        found.setdefault(model, []).append(text)
    return found


# ---- one model ----------------------------------------------------------------------------------
def random_batch(batch: int, size, num_classes: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch, *size), generator=gen).to(device)
    return images, labels


def prepare(model: torch.nn.Module, setting: Setting, device: torch.device):
    """The model as ``train`` would run it in ``setting``: on the device, memory format, compiled."""
    model = model.to(device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if setting.compile else model


def measure_inference(model, images, setting: Setting, device: torch.device, warmup: int, runs: int,
                      memory: bool = True) -> dict:
    model.eval()
    if setting.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.inference_mode(), autocast(device, setting.precision):
            model(images)

    stats = time_calls(forward, device, warmup, runs)
    stats["images_per_s"] = images.shape[0] / stats["median_s"]
    if memory:
        stats.update(peak_memory(forward, device, existing=list(model.parameters()) + list(model.buffers())))
    return stats


def make_train_step(model, criterion, optimizer, images, labels, setting: Setting):
    from segbench.engine.step import train_step

    scaler = torch.amp.GradScaler(enabled=setting.precision == "fp16")
    model.train()
    return lambda: train_step(model, criterion, optimizer, scaler, images, labels, setting.precision,
                              setting.channels_last)


def measure_training(model, criterion, optimizer, images, labels, setting: Setting, device: torch.device,
                     warmup: int, runs: int, memory: bool = True) -> dict:
    step = make_train_step(model, criterion, optimizer, images, labels, setting)
    stats = time_calls(step, device, max(1, warmup), runs)  # one warm-up at least: creates optimiser state
    stats["images_per_s"] = images.shape[0] / stats["median_s"]
    if memory:
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        stats.update(peak_memory(step, device, existing=[*model.parameters(), *model.buffers(), *state, *grads]))
    return stats


def bench_model(name: str, cfg: DictConfig, settings: list[Setting], device: torch.device) -> dict:
    """Everything ``bench`` measures for one model config (``cfg.model``)."""
    b = cfg.bench
    size = tuple(int(s) for s in b.input_size)
    record = {"model": name, "config": OmegaConf.to_container(cfg.model, resolve=True),
              "input_size": list(size), "flop_convention": FLOP_CONVENTION}
    record["params"] = build.count_parameters(build_model_cfg(cfg.model, "meta"))
    if b.only == "params":
        return record
    record["flops_per_image"], record["flops_counted_on"] = flops_per_image(cfg.model, size)
    if b.only == "flops":
        return record
    rows = []
    for i, setting in enumerate(settings):
        row = {"setting": setting.name, **asdict(setting), "default": i == 0}
        torch.manual_seed(int(cfg.trainer.seed))
        model = prepare(build_model_cfg(cfg.model), setting, device)
        for batch in b.batch_sizes:
            images, _ = random_batch(int(batch), size, int(cfg.data.num_classes), device)
            row[f"infer_bs{batch}"] = measure_inference(model, images, setting, device, int(b.warmup), int(b.runs),
                                                        memory=bool(b.memory))
        if b.train:
            from hydra.utils import instantiate

            images, labels = random_batch(int(b.train_batch_size), size, int(cfg.data.num_classes), device)
            base = getattr(model, "_orig_mod", model)
            optimizer = build_optimizer(cfg, base)
            criterion = instantiate(cfg.loss).to(device)
            row["train"] = measure_training(model, criterion, optimizer, images, labels, setting, device,
                                            int(b.warmup), int(b.train_runs), memory=bool(b.memory))
        rows.append(row)
        del model
    record["settings"] = rows
    return record


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


# ---- the verb -----------------------------------------------------------------------------------
def compose_model_cfg(name: str, base: DictConfig) -> DictConfig:
    """The model config ``model=<name>`` composes to, with this run's data interpolations."""
    cfg_model = _compose_group("model", name)
    merged = OmegaConf.create({"model": cfg_model, "data": OmegaConf.to_container(base.data)})
    return merged.model


def _compose_group(group: str, name: str) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside `segbench bench`
        return compose(config_name="bench", overrides=[f"{group}={name}"])[group]
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        return compose(config_name="bench", overrides=[f"{group}={name}"])[group]


def model_names(cfg: DictConfig) -> list[str]:
    if not cfg.model.get("all", False):
        return []
    names = api.available("model")
    if cfg.bench.get("models"):
        unknown = set(cfg.bench.models) - set(names)
        if unknown:
            raise SegbenchError(f"bench.models: unknown {sorted(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in set(cfg.bench.models)]
    return names


def run(cfg: DictConfig) -> dict:
    """``segbench bench``: print the tables, write ``bench.json`` in the run dir."""
    from hydra.core.hydra_config import HydraConfig

    b = cfg.bench
    if b.only not in (None, "params", "flops"):
        raise SegbenchError(f"bench.only must be params, flops or null, got '{b.only}'")
    device = resolve_device(str(b.device))
    torch.backends.cudnn.benchmark = bool(cfg.trainer.cudnn_benchmark)
    names = model_names(cfg)
    zoo = bool(names)
    default = default_setting(device, cfg.trainer)
    if zoo:
        settings = [default]  # one row per network: train's own setting
        configs = [(n, compose_model_cfg(n, cfg)) for n in names]
    else:
        settings = with_default_first(settings_for(device, b), default)
        configs = [(HydraConfig.get().runtime.choices.get("model", "model"), cfg.model)]
    skipped = [] if device.type == "cuda" or cpu_has_native_bf16() or b.precisions not in (None, "all") \
        else ["bf16 (this CPU has no AVX512-BF16/AMX: emulated, 10-50x slower; bench.precisions=[fp32,bf16] "
              "measures it anyway)"]

    records = []
    for name, model_cfg in configs:
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.model = model_cfg
        start = time.perf_counter()
        record = bench_model(name, run_cfg, settings, device)
        record["bench_time_s"] = round(time.perf_counter() - start, 1)
        records.append(record)
        if zoo:
            print(f"  {name}: done in {record['bench_time_s']:.0f} s", flush=True)

    device_name = describe_device(device)
    header = (f"segbench bench on {device_name}, input {b.input_size[0]}x{b.input_size[1]}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
              f"FLOPs: {FLOP_CONVENTION}. Times: median (p90) of {b.runs} runs after {b.warmup} warm-up; "
              f"training step = step.train_step, batch {b.train_batch_size}, SGD.\n"
              "Memory: " + ("CUDA max_memory_allocated" if device.type == "cuda"
                            else "peak live tensor bytes (bench.json: also process peak RSS)"))
    print(header)
    if skipped:
        print("skipped: " + "; ".join(skipped))
    papers = published_results()
    if zoo:
        print(zoo_table(records, papers))
    else:
        record = records[0]
        p = record["params"]
        print(f"{record['model']}: {_m(p['total'])} M parameters ({_m(p['trainable'])} M trainable; backbone "
              f"{_m(p['backbone'])} M, head {_m(p['head'])} M)"
              + (f", {record['flops_per_image'] / 1e9:.2f} GFLOPs per image" if "flops_per_image" in record else ""))
        if record.get("settings"):
            print(settings_table(record))
    result = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "bench": OmegaConf.to_container(b, resolve=True), "skipped": skipped, "models": records,
              "paper": {r["model"]: papers.get(r["model"], []) for r in records}}
    out = Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    write_json(out, result)
    print(f"wrote {out}")
    return result


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name, the ISA flags that decide segbench's defaults (from the kernel's
    ``/proc/cpuinfo``), PyTorch's own kernel level (``torch.backends.cpu.get_cpu_capability``),
    logical cores and the threads this process uses."""
    name, flags = None, set()
    with contextlib.suppress(OSError):
        with open(path) as f:
            for line in f:  # the first processor's block is enough: the cores are alike
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    return {"model_name": name or platform.processor() or "CPU", "flags": [f for f in CPU_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "logical_cores": os.cpu_count(),
            "threads": torch.get_num_threads()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = cpu_info()
    flags = " ".join(info["flags"]) or "no AVX2"
    return (f"{info['model_name']} ({flags}; torch kernels {info['torch_capability']}; "
            f"{info['logical_cores']} logical cores)")
