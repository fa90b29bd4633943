"""Shared by the benchmark scripts: interleaved A/B timing, the machine header, model builders.

Every script times its candidates *interleaved* (round r times A, B, C..., then round r+1),
so a slow patch of a shared machine hits all of them alike, and reports per-candidate medians
plus the median of the per-round ratios to a named reference measured in the same process.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench import bench, io  # noqa: E402
from segbench.tables import markdown_table  # noqa: E402,F401 - the benchmarks print with it
from segbench.engine.device import autocast  # noqa: E402
from segbench.engine.losses import SegmentationLoss  # noqa: E402
from segbench.engine.step import train_step  # noqa: E402


def header(title: str, args) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"## {title}\n\n`{' '.join(['python', *sys.argv])}`\n\n"
            f"{bench.describe_device(torch.device('cpu'))}; torch {torch.__version__}, {torch.get_num_threads()} "
            f"intra-op threads, Python {platform.python_version()}; load average at start "
            f"{' / '.join(f'{x:.1f}' for x in load)} (shared machine: compare ratios, not absolute times)\n")


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, list[float]]:
    """``{name: [seconds per round]}``, each round calling every candidate once, in turn."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for r in range(rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))  # no fixed position
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            bench.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of time(name) / time(reference) (> 1: slower than the reference)."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def gemm_closure(dtype=torch.float32, size: int = 1024, seconds: float = 0.5):
    """(fn, FLOPs of one call): square GEMMs worth about ``seconds`` now, to interleave with the
    candidates so that "fraction of the machine's GEMM rate" compares like with like on a
    machine whose load changes."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    a @ b
    calls = max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))

    def fn():
        for _ in range(calls):
            a @ b

    return fn, 2 * size**3 * calls


def median(values) -> float:
    return statistics.median(values)


def train_closure(model, images, labels, precision="fp32", channels_last=False, lr=0.01):
    """segbench's training step (step.train_step) on ``model``, with plain SGD as the papers."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    criterion = SegmentationLoss(ignore_index=255, aux_weight=0.4)
    scaler = torch.amp.GradScaler(enabled=precision == "fp16")
    return lambda: train_step(model, criterion, optimizer, scaler, images, labels, precision, channels_last)


def infer_closure(model, images, precision="fp32", channels_last=False):
    model.eval()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    device = images.device

    def forward():
        with torch.inference_mode(), autocast(device, precision):
            return model(images)

    return forward


def to_format(model, channels_last: bool):
    return model.to(memory_format=torch.channels_last) if channels_last else model


def torchvision_model(name: str, num_classes: int = 21, device: str = "cpu"):
    """torchvision.models.segmentation.<name>, random init (no download), no aux head."""
    import torchvision

    with torch.device(device):
        return getattr(torchvision.models.segmentation, name)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def segbench_model(name: str, num_classes: int = 21, device: str = "cpu", **overrides):
    from segbench import api

    with torch.device(device):
        return api.build_model(name, num_classes, **overrides)


def write_json(path: str | None, data: dict) -> None:
    """``--json <path>``: the results, written atomically (segbench.io); nothing without a path."""
    if path:
        io.write_text(path, json.dumps(data, indent=2, default=str) + "\n")  # str() what JSON lacks
        print(f"\nwrote {path}")


def top_ops(fn, rows: int = 8) -> str:
    """The ``torch.profiler`` table of one call of ``fn``, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
