"""Bench measurement, what a network costs: time (:func:`time_calls`, :func:`matmul_rate`), memory
(:class:`TensorMemoryTracker`, :func:`peak_memory`), work (:func:`count_flops`, :func:`flops_per_image`),
the steps that are timed (:func:`random_batch`, :func:`loader_batch`, :func:`prepare`, :func:`infer_step`, :func:`make_train_step`)
and the machine (:func:`cpu_info`, :func:`describe_device`). The library behind ``segbench bench``
(:mod:`segbench.app.bench`), benchmarks/ and scripts/device_check.py; typed arguments only.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from segbench.engine import device as machine
from segbench.engine.step import train_step

FLOP_CONVENTION = "1 multiply-add = 2 FLOPs; conv/matmul only (FlopCounterMode)"


# ---- settings -----------------------------------------------------------------------------------
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
    return ["fp32"] + (["bf16"] if machine.cpu_has_native_bf16() else [])


def default_setting(device: torch.device, trainer) -> Setting:
    """The setting ``segbench train`` would use with this ``trainer`` config (``auto`` resolved
    by the same functions the trainer calls)."""
    precision, channels_last = machine.resolve_speed(device, trainer.precision, trainer.get("channels_last", "auto"))
    return Setting(precision, channels_last, bool(trainer.get("compile", False)))


# ---- time ---------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn()``, the device work it queued included."""
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, runs: int) -> dict:
    """Seconds per call of ``fn()``: the first call's time, then median / p90 / min over ``runs``.

    Our own loop, not ``torch.utils.benchmark.Timer``: Timer reports no first call (compilation,
    cudnn.benchmark's search) and no fixed count of per-call samples (``timeit`` adds two hidden
    warm-up calls and returns one mean; the autoranges pick the count by time), while every
    training step changes the model, so how many calls run must be ours to say."""
    warm = [time_once(fn, device) for _ in range(warmup)]
    return summarize([time_once(fn, device) for _ in range(runs)], warm[0] if warm else None)


def summarize(times: list[float], first: float | None = None) -> dict:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)] if ordered else math.nan
    return {"median_s": statistics.median(ordered) if ordered else math.nan, "p90_s": p90,
            "min_s": ordered[0] if ordered else math.nan, "runs": len(ordered), "first_s": first}


def square_gemm(dtype: torch.dtype, size: int = 1024, device: torch.device | str = "cpu"):
    """(fn, FLOPs of one call): one ``size`` x ``size`` matrix product in ``dtype``."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    return (lambda: a @ b), 2 * size**3


def timer(fn: Callable[[], object]) -> Timer:
    """``torch.utils.benchmark.Timer`` of ``fn()`` on this process's threads (Timer's default is 1)."""
    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 1024, min_time: float = 1.0) -> float:
    """Sustained FLOP/s of a square ``size`` GEMM in ``dtype`` (1 multiply-add = 2 FLOPs)."""
    fn, flops = square_gemm(dtype, size, device)
    return flops / timer(fn).blocked_autorange(min_run_time=min_time).mean


# ---- memory -------------------------------------------------------------------------------------
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


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``, the peak RSS) in bytes."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
        return True
    return False


def peak_memory(fn: Callable[[], object], device: torch.device, existing=()) -> dict:
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
    return {"peak_bytes": tracker.peak, "peak_rss_bytes": _status_bytes("VmHWM") if fresh else None}


# ---- work ---------------------------------------------------------------------------------------
def build_on(device: torch.device | str, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` with every tensor it creates on ``device``; on ``"meta"`` nothing is allocated
    or initialised (full-size networks in milliseconds, for parameter and FLOP counts)."""
    with torch.device(device):
        return make()


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


def flops_per_image(make: Callable[[], torch.nn.Module], size: tuple[int, int], train: bool = False):
    """(FLOPs per image at ``size``, the device they were counted on) for the network ``make()``
    builds: on the meta device, or a real CPU run if a layer has no meta implementation."""
    batch = 2  # train mode BN / image pooling need more than one value per channel
    for device in ("meta", "cpu"):
        try:
            images = torch.randn(batch, 3, *size, device=device)
            labels = torch.zeros(batch, *size, dtype=torch.long, device=device)
            return count_flops(build_on(device, make), images, train, labels) // batch, device
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise


# ---- what is timed ------------------------------------------------------------------------------
def random_batch(batch: int, size, num_classes: int, device: torch.device | str = "cpu", seed: int = 0):
    """Images N x 3 x H x W and labels N x H x W, the same for a given seed on every device."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch, *size), generator=gen).to(device)
    return images, labels


def loader_batch(batch: int, size, num_classes: int, device: torch.device | str = "cpu", seed: int = 0):
    """What a DataLoader hands the step: uint8 images N x 3 x H x W and uint8 labels N x H x W
    (random, the same for a given seed), on ``device``; the step normalises them there."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8).to(device)
    labels = torch.randint(0, num_classes, (batch, *size), generator=gen, dtype=torch.uint8).to(device)
    return images, labels


def prepare(model: torch.nn.Module, setting: Setting, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model as ``train`` would run it in ``setting``: on the device, memory format, compiled."""
    model = model.to(device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if setting.compile else model


def infer_step(model: torch.nn.Module, images: torch.Tensor, setting: Setting) -> Callable[[], dict]:
    """One eval-mode forward under inference mode and ``setting``'s autocast, as evaluation runs it."""
    model.eval()
    if setting.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.inference_mode(), machine.autocast(images.device, setting.precision):
            return model(images)

    return forward


def make_train_step(model, criterion, optimizer, images, labels, setting: Setting,
                    normalization=None) -> Callable[[], torch.Tensor]:
    """One call = one ``step.train_step`` (normalise, zero_grad, forward, loss, backward, optimiser
    step). ``normalization``: for the uint8 images of :func:`loader_batch` (None: float inputs).
    A loss with U-Net's weight maps gets a uniform map: the step's cost does not depend on its
    values, and the loader's workers make the real ones."""
    scaler = torch.amp.GradScaler(enabled=setting.precision == "fp16")
    weights = None
    if getattr(criterion, "weight_map", None) is not None:
        weights = torch.ones(labels.shape, device=labels.device)
    model.train()
    return lambda: train_step(model, criterion, optimizer, scaler, images, labels, setting.precision,
                              setting.channels_last, normalization=normalization, weights=weights)


# ---- the machine --------------------------------------------------------------------------------
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name, the ISA flags that decide segbench's defaults (from the kernel's
    ``/proc/cpuinfo``), PyTorch's own kernel level (``torch.backends.cpu.get_cpu_capability``),
    logical cores and the threads this process uses."""
    name, flags = None, set()
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:  # the first processor's block is enough: the cores are alike
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name is None:
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {"model_name": name or platform.processor() or "CPU", "flags": [f for f in CPU_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": machine.cpu_has_native_bf16(), "logical_cores": os.cpu_count(),
            "threads": torch.get_num_threads()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = cpu_info()
    flags = " ".join(info["flags"]) or "no AVX2"
    return (f"{info['model_name']} ({flags}; torch kernels {info['torch_capability']}; "
            f"{info['logical_cores']} logical cores)")
