"""``segbench runs [runs=<dir>]``: every run below ``runs=`` with its status, iterations and
best mIoU — the question after a night of runs, answered from the files alone.

A run directory is one holding ``run.json`` (:mod:`segbench.record`); the rows and their status
(done / unfinished / interrupted / failed / unreadable) are :mod:`segbench.aggregate`'s, the same
``segbench report`` and the sweep's summary show. Nothing but those small JSON files is read
(never a checkpoint), so listing hundreds of runs takes a moment.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from segbench.aggregate import STATUS, RunRow, number, pct, rows
from segbench.errors import SegbenchError
from segbench.tables import text_table

COLUMNS = ("run", "model", "data", "status", "iters", "best mIoU", "last mIoU", "updated")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _fraction_pct(value) -> str:
    value = number(value)
    return "-" if value is None else pct(100 * value)


def table_row(run: RunRow, now: float) -> dict:
    last = run.validation.scores.get("mIoU") if run.validation else None
    return {"run": run.name, "model": run.model or "-", "data": run.data or "-", "status": run.status,
            "iters": run.iters or "-", "best mIoU": _fraction_pct(run.summary.get("best_mIoU")),
            "last mIoU": _fraction_pct(last), "updated": _age(now - run.updated)}


def _best(run: RunRow) -> float:
    best = number(run.summary.get("best_mIoU"))
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
    print(text_table(COLUMNS, [table_row(r, now) for r in found]))
    counts = Counter(r.status for r in found)
    print(f"{len(found)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return found


# ---- multirun job folders named by what varied ----------------------------------------------
SWEPT_ENV = "SEGBENCH_SWEPT_KEYS"  # set by the CLI for a multirun; inherited by launcher processes
SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "shuffle(", "sort(", "tag(")
NOT_A_NAME = ("data.root", "run_dir", "trainer.progress", "trainer.device", "data.num_workers", "trainer.resume")
MAX_NAME = 120


def _has_top_level_comma(value: str) -> bool:
    depth, quote = 0, None
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def split_override(text: str) -> tuple[str, str]:
    """``+model.x=1`` -> ``("model.x", "1")``: a command-line override's key (without Hydra's
    ``+``/``~`` prefixes) and its value."""
    key, _, value = str(text).partition("=")
    return key.lstrip("+~"), value


def swept_keys(args: list[str]) -> list[str]:
    """The keys a multirun command line sweeps: ``model=fcn8s,segnet`` or ``optim.lr=range(...)``."""
    keys = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = split_override(arg)
        if key.startswith(("hydra.", "hydra/")):
            continue
        if value.startswith(SWEEP_FUNCTIONS) or _has_top_level_comma(value):
            keys.append(key)
    return keys


def job_dir_name(task_overrides, num) -> str:
    """``hydra.sweep.subdir`` of a multirun job: its values of the swept keys, in command-line
    order (``model=fcn8s,data=camvid``), as one safe folder name. Without a record of what was
    swept (a launcher that drops the environment) every override but paths and switches is used;
    with none at all, ``job<num>``. Long names are cut and keep a hash, so they stay unique."""
    import hashlib
    import os

    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    items = []
    for override in task_overrides or []:
        key, value = split_override(override)
        if (key in swept) if swept else (key not in NOT_A_NAME):
            items.append(f"{key}={value}")
    name = ",".join(items).replace("/", "_").replace("\\", "_") or f"job{num}"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
