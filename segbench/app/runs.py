"""``segbench runs [runs=<dir>]``: every run below ``runs=`` with its status, iterations and
best validation score — the question after a night of runs, answered from the files alone.

The best score is the one ``best.pt`` was kept by: the run's ``trainer.select_by`` metric (mIoU;
aAcc for SegNet-Basic), named in the column when every run listed keeps the same one
(``best mIoU``), beside each number when they differ.

A run directory is one holding ``run.json`` (:mod:`segbench.record`); the rows and their status
(done / unfinished / interrupted / failed / unreadable) are :mod:`segbench.app.aggregate`'s, the same
``segbench report`` and the sweep's summary show. Nothing but those small JSON files is read
(never a checkpoint), so listing hundreds of runs takes a moment.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from segbench.app.aggregate import STATUS, RunRow, number, pct, rows
from segbench.errors import SegbenchError
from segbench.tables import text_table

COLUMNS = ("run", "model", "data", "status", "iters", "best", "last mIoU", "updated")  # "best" gains its metric


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _fraction_pct(value) -> str:
    value = number(value)
    return "-" if value is None else pct(100 * value)


def best_metrics(found: list[RunRow]) -> set[str]:
    return {r.summary.best.metric for r in found if r.summary.best}


def table_row(run: RunRow, now: float, metric_in_cell: bool = False) -> dict:
    """One line; ``metric_in_cell``: the best score says its metric (the runs keep different ones)."""
    last = run.validation.scores.get("mIoU") if run.validation else None
    best = run.summary.best
    best_cell = _fraction_pct(best.value if best else None)
    if best and metric_in_cell:
        best_cell += f" {best.metric}"
    return {"run": run.name, "model": run.model or "-", "data": run.data or "-", "status": run.status,
            "iters": run.iters or "-", "best": best_cell, "last mIoU": _fraction_pct(last),
            "updated": _age(now - run.updated)}


def _best(run: RunRow) -> float:
    best = number(run.summary.best.value) if run.summary.best else None
    return -1.0 if best is None else best


SORTS = {
    "name": lambda r: r.name,
    "time": lambda r: r.updated,
    "miou": lambda r: -_best(r),
}


def run(cfg: DictConfig) -> list[RunRow]:
    root = Path(str(cfg.runs)).expanduser()
    if not root.is_dir():
        raise SegbenchError(f"no runs at {root}; pass runs=<folder holding run directories> "
                            f"(default: $SEGBENCH_RUNS or ./runs)")
    sort = str(cfg.get("sort", "name"))
    if sort not in SORTS:
        raise SegbenchError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    status = cfg.get("status")
    shown = (*STATUS.values(), "unreadable")
    if status and status not in shown:
        raise SegbenchError(f"status must be one of {', '.join(shown)}, got {status!r}")
    found = sorted(rows(root), key=SORTS[sort])
    if status:
        found = [r for r in found if r.status == status]
    if not found:
        print(f"no runs below {root}")
        return found
    now = time.time()
    metrics = best_metrics(found)
    best = f"best {min(metrics)}" if len(metrics) == 1 else "best"
    table = [table_row(r, now, metric_in_cell=len(metrics) > 1) for r in found]
    print(text_table([best if c == "best" else c for c in COLUMNS], [{**row, best: row["best"]} for row in table]))
    counts = Counter(r.status for r in found)
    print(f"{len(found)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return found
