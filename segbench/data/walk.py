"""What the ``segbench data`` actions share: the configured dataset (class, or one split built
without transforms) and a map over its samples, in forked workers for big trees."""
from __future__ import annotations

import sys
from multiprocessing import get_context

from hydra.utils import get_class
from omegaconf import DictConfig

from segbench.data.conversion import progress
from segbench.trust import instantiate_unwrapped

PARALLEL_FROM = 200  # samples; below this a process pool costs more than it saves

# The datasets being walked, by split. Pool workers are forked after this is set, so they
# inherit it instead of receiving a pickled dataset (ISBI's, for one, holds whole stacks) per task.
DATASETS: dict = {}


def build(cfg: DictConfig, split: str, **overrides):
    """The dataset of ``cfg.data`` for ``split``, without transforms."""
    return instantiate_unwrapped(cfg.data.dataset, split=split, **overrides)


def dataset_class(cfg: DictConfig):
    return get_class(cfg.data.dataset._target_)


def map_samples(fn, jobs: list, datasets: dict, workers: int, desc: str):
    """``map(fn, jobs)`` with a progress bar; ``fn`` finds the datasets in :data:`DATASETS`."""
    DATASETS.clear()
    DATASETS.update(datasets)
    try:
        if workers > 1 and len(jobs) >= PARALLEL_FROM and sys.platform != "win32":
            with get_context("fork").Pool(workers) as pool:
                yield from progress(pool.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc)
        else:
            yield from progress(map(fn, jobs), total=len(jobs), desc=desc)
    finally:
        DATASETS.clear()
