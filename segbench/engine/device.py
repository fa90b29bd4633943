"""The machine a run trains on, and what follows from it: device, seeds, precision, memory format.

Every machine-dependent default (``trainer.precision``, ``trainer.channels_last``) resolves here,
from one question about the CPU (:func:`cpu_has_native_bf16`). :func:`resolve_speed` is the one
decision of (precision, memory format) that every verb takes -- train (:func:`prepare_process`),
eval and predict (``segbench.app.loaded``), bench (``segbench.engine.measure.default_setting``) --
so they agree on what ``auto`` means and run a checkpoint alike.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch

from segbench.engine.distributed import launch_environment
from segbench.errors import SegbenchError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegbenchError(f"trainer.device={name} but CUDA is not available; use trainer.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CPU_BF16_ENV = "SEGBENCH_CPU_BF16"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")  # how a switch may be spelled


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16).

    Elsewhere oneDNN has no bf16 kernels and PyTorch falls back to slow reference code:
    on this project's AVX2 reference CPU a bf16 1024x1024 GEMM runs ~50x slower than fp32
    and a bf16-autocast DeepLab v3 training step >10x slower (``benchmarks/precision.py``).

    ``SEGBENCH_CPU_BF16=1|0`` overrides the detection. Every machine-dependent default
    (precision, memory format) derives from this one answer, so the test suite forces it
    both ways and passes on AVX2-only and AMX CPUs alike.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced:
        if forced not in _TRUE + _FALSE:
            raise SegbenchError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 is native) or 0")
        return forced in _TRUE
    return detect_cpu_bf16()


@functools.lru_cache(maxsize=1)
def detect_cpu_bf16() -> bool:
    """What the kernel says this CPU can do (``/proc/cpuinfo`` flags), read once."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> the fastest precision that is safe on ``device`` (others pass through).

    bf16 autocast on CUDA GPUs that support it (Ampere and later) and on CPUs with native
    bf16; fp32 everywhere else. fp16 is never chosen automatically: it needs loss scaling
    and can overflow, so pre-Ampere GPUs stay fp32 unless ``trainer.precision=fp16`` is
    asked for. The CPU rule is measured (benchmarks/precision.py; docs/performance.md).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_channels_last(device: torch.device, precision: str, value="auto") -> bool:
    """``trainer.channels_last``: ``auto`` -> NHWC where the step runs in bf16/fp16 natively.

    Measured (docs/performance.md, benchmarks/precision.py): on an AMX/AVX512-BF16 CPU
    oneDNN's bf16 convolutions are NHWC kernels, and an NCHW model pays a reorder around
    every conv (DeepLab v3 R-50 bf16: 2.39 s vs 3.09 s per step); tensor cores on CUDA want
    NHWC likewise. In fp32 on an AVX2 CPU NHWC gained nothing consistent (0.78-1.24x), and
    bf16 without native support is slow in any layout, so ``auto`` keeps NCHW there.
    ``precision`` may be ``auto`` (resolved here). True/false pass through.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    if text != "auto":
        raise SegbenchError(f"trainer.channels_last must be auto, true or false, got {value!r}")
    precision = resolve_precision(device, str(precision))
    if precision not in ("bf16", "fp16"):
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def resolve_speed(device: torch.device, precision="auto", channels_last="auto") -> tuple[str, bool]:
    """(precision, channels_last) to run with on ``device``: the requested ``precision`` (``auto``,
    fp32, bf16, fp16) and memory format (``auto``, true, false) with every ``auto`` resolved."""
    precision = resolve_precision(device, str(precision))
    return precision, resolve_channels_last(device, precision, channels_last)


def bind_device(name: str) -> torch.device:
    """The one device this process trains on (``trainer.device``), decided and bound before the
    process group or anything else touches a GPU.

    In order: an explicit ``cuda:N`` is that GPU (not GPU 0; a sweep job can name its own); a
    process that sees exactly one GPU (SLURM binding one GPU per task, a
    ``CUDA_VISIBLE_DEVICES=<n>`` job) uses it whatever its rank; under torchrun / SLURM tasks
    ``cuda:<LOCAL_RANK>``; else GPU 0. It becomes the current CUDA device at once: NCCL and
    ``broadcast_object_list`` use the current device, GPU 0 on every rank until bound.
    """
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    _, local_rank, processes = launch_environment()
    visible = torch.cuda.device_count()
    if device.index is not None:
        if processes > 1 and visible > 1:
            raise SegbenchError(f"trainer.device={name} names one GPU for {processes} processes; use "
                                f"trainer.device=cuda (each process takes cuda:<LOCAL_RANK>)")
        if device.index >= visible:
            raise SegbenchError(f"trainer.device={name} but this process sees {visible} GPU(s) "
                                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    elif visible == 1:
        device = torch.device("cuda", 0)
    elif local_rank >= visible:
        raise SegbenchError(f"LOCAL_RANK={local_rank} but this process sees {visible} GPUs; start at most "
                            f"{visible} processes per node, or give each task one GPU")
    else:
        device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def prepare_process(trainer_cfg, device: torch.device) -> tuple[str, bool]:
    """This process's precision and memory format (``trainer.precision`` / ``channels_last``
    resolved) for the bound ``device``, with the seeds and determinism set."""
    precision, channels_last = resolve_speed(device, trainer_cfg.precision, trainer_cfg.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(trainer_cfg.cudnn_benchmark)  # training crops: one shape
    seed_everything(int(trainer_cfg.seed))
    if trainer_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return precision, channels_last


class ShapeFollowingBenchmark:
    """``cudnn.benchmark`` during an evaluation: kept as it is while the model sees one input
    shape, off from the second shape to the end, restored after (``with``).

    Training crops have one size, so autotuning once pays off every step. An evaluation of
    whole VOC images, or at several scales, meets hundreds of shapes and would autotune each
    one; an evaluation of one fixed-size split keeps the tuned kernels. It watches the model's
    inputs (a forward pre-hook), so every protocol is covered without knowing it."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.shape, self.hook = model, None, None

    def __enter__(self) -> ShapeFollowingBenchmark:
        self.before = torch.backends.cudnn.benchmark
        if self.before:
            self.hook = self.model.register_forward_pre_hook(self._see)
        return self

    def _see(self, module, args) -> None:
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc) -> None:
        if self.hook is not None:
            self.hook.remove()
        torch.backends.cudnn.benchmark = self.before


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast or nothing. fp16 is CUDA-only (CPU autocast supports bf16)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise SegbenchError(f"trainer.precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if dtype is torch.float16 and device.type != "cuda":
        raise SegbenchError("trainer.precision=fp16 needs CUDA; on CPU use bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)
