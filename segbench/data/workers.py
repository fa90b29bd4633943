"""How many DataLoader worker processes: ``data.num_workers: auto`` (the default) or a count.

One worker decodes and augments ~10-15 training images a second (a 2048x1024 Cityscapes frame
to a 713 crop: see docs/performance.md), while one GPU step of a large network takes a batch of 8-16 in
well under a second: a fixed 4 workers starve it. ``auto`` takes the cores this process may run
on (``os.sched_getaffinity``: what a cluster job or ``taskset`` grants, not the host's count),
shares them among the local processes (torchrun's ``LOCAL_WORLD_SIZE``), keeps one for the
process itself (it runs the step, or on a GPU, feeds it and pins the memory), and starts no
more workers than there are items to load.
"""
from __future__ import annotations

import os

from segbench.errors import SegbenchError

AUTO = "auto"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def local_processes() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def num_workers(setting, items: int, cores: int | None = None, processes: int | None = None) -> int:
    """``setting`` (``"auto"`` or an integer >= 0) as a worker count for a loader of ``items``
    loads (samples, or batches where a loader ends after one pass)."""
    if str(setting) != AUTO:
        if isinstance(setting, bool) or not str(setting).lstrip("-").isdigit() or int(setting) < 0:
            raise SegbenchError(f"data.num_workers must be auto or an integer >= 0, got {setting!r}")
        return int(setting)
    cores = available_cores() if cores is None else cores
    processes = local_processes() if processes is None else processes
    per_process = max(1, cores // processes - 1)
    return max(0, min(per_process, items))
