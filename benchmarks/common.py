"""Shared by the benchmark scripts: interleaved A/B timing, the machine header, the timed steps.

Every script times its candidates *interleaved* (round r times A, B, C..., then round r+1),
so a slow patch of a shared machine hits all of them alike, and reports per-candidate medians
plus the median of the per-round ratios to a named reference measured in the same process.
The measuring itself (clock, FLOPs, memory, the training step, random batches) is
``segbench.engine.measure``'s, the same as ``segbench bench`` uses; the scripts build segbench's
networks with ``segbench.api.build_model`` and print with ``segbench.tables``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench import io
from segbench.engine import measure
from segbench.engine.losses import SegmentationLoss
from segbench.engine.measure import Setting


def header(title: str, args) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"## {title}\n\n`{' '.join(['python', *sys.argv])}`\n\n"
            f"{measure.describe_device(torch.device('cpu'))}; torch {torch.__version__}, {torch.get_num_threads()} "
            f"intra-op threads, Python {platform.python_version()}; load average at start "
            f"{' / '.join(f'{x:.1f}' for x in load)} (shared machine: compare ratios, not absolute times)\n")


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """``{name: [seconds per round]}``, each round calling every candidate once, in turn.

    Not ``torch.utils.benchmark.Timer``: a Timer measures one statement on its own, and the
    point here is that every round meets the same machine load for every candidate."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for r in range(rounds):
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))  # no fixed position
        for name in order:
            times[name].append(measure.time_once(candidates[name], torch.device(device)))
    return times


def ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of time(name) / time(reference) (> 1: slower than the reference)."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def gemm_closure(dtype=torch.float32, size: int = 1024, seconds: float = 0.5):
    """(fn, FLOPs of one call): square GEMMs worth about ``seconds`` now, to interleave with the
    candidates so that "fraction of the machine's GEMM rate" compares like with like on a
    machine whose load changes."""
    gemm, flops = measure.square_gemm(dtype, size)
    one_call = measure.timer(gemm).blocked_autorange(min_run_time=min(seconds, 0.2)).median
    calls = max(1, round(seconds / max(one_call, 1e-6)))

    def fn():
        for _ in range(calls):
            gemm()

    return fn, flops * calls


def sgd(model, lr=0.01, **options) -> torch.optim.SGD:
    """SGD + momentum 0.9, weight decay 1e-4, as the paper recipes (conf/optim/sgd.yaml)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, **options)


def train_closure(model, images, labels, setting: Setting | None = None, optimizer=None):
    """segbench's training step (step.train_step, through ``measure.make_train_step``) on
    ``model`` in ``setting``'s memory format and precision; plain SGD unless ``optimizer``."""
    setting = setting or Setting()
    model = measure.prepare(model, setting)
    criterion = SegmentationLoss(ignore_index=255, aux_weight=0.4)
    return measure.make_train_step(model, criterion, optimizer or sgd(model), images, labels, setting)


def infer_closure(model, images, setting: Setting | None = None):
    """Eval-mode inference as evaluation runs it (``measure.infer_step``), in ``setting``."""
    setting = setting or Setting()
    return measure.infer_step(measure.prepare(model, setting), images, setting)


def torchvision_model(name: str, num_classes: int = 21):
    """torchvision.models.segmentation.<name>, random init (no download), no aux head."""
    import torchvision

    return getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def write_json(path: str | None, data: dict) -> None:
    """``--json <path>``: the results, written atomically (segbench.io); nothing without a path."""
    if path:
        io.write_text(path, json.dumps(data, indent=2, default=str) + "\n")  # str() what JSON lacks
        print(f"\nwrote {path}")


def top_ops(fn, rows: int = 8) -> str:
    """The ``torch.profiler`` table of one call of ``fn``, by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
