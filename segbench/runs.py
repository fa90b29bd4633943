"""``segbench runs [runs=<dir>]``: every run below ``runs=`` with its status, iterations and
best mIoU — the question after a night of runs, answered from the files alone.

A run directory is one holding ``.hydra/config.yaml``, ``metrics.json``, ``run.json``,
``sweep_job.json`` or a checkpoint. Nothing is loaded but small JSON/YAML files (never a
checkpoint), so listing hundreds of runs takes a moment. Status, in that order of evidence:

* ``failed`` / ``interrupted`` — a sweep job's ``sweep_job.json`` says so;
* ``done`` — ``metrics.json``'s ``run.finished`` is true (training reached ``max_iters``);
* ``unfinished`` — a checkpoint or validation exists but training has not reached the end:
  still running, or stopped (the ``updated`` column tells which is likely);
* ``started`` — only the config exists (no checkpoint yet).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segbench.io import read_json
from segbench.errors import SegbenchError

MARKERS = ("metrics.json", "run.json", "sweep_job.json", "last.pt", "best.pt", ".hydra/config.yaml")


def find_run_dirs(root: Path) -> list[Path]:
    found = set()
    for marker in MARKERS:
        found |= {p.parent for p in root.rglob(Path(marker).name)
                  if p.as_posix().endswith(marker) and ".extract-" not in p.as_posix()}
    found = {d.parent if d.name == ".hydra" else d for d in found}
    return sorted(found)


def _choices(run_dir: Path) -> dict:
    hydra = run_dir / ".hydra" / "hydra.yaml"
    try:
        return dict(OmegaConf.load(hydra).hydra.runtime.choices) if hydra.is_file() else {}
    except Exception:  # noqa: BLE001 - a damaged file only costs the model/data columns
        return {}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def describe(run_dir: Path, now: float | None = None) -> dict:
    metrics = read_json(run_dir / "metrics.json")
    info = metrics.get("run", {}) if isinstance(metrics, dict) else {}
    job = read_json(run_dir / "sweep_job.json")
    choices = _choices(run_dir)
    files = [p for p in run_dir.iterdir() if p.is_file()] + list((run_dir / ".hydra").glob("*"))
    updated = max((p.stat().st_mtime for p in files), default=run_dir.stat().st_mtime)
    if job.get("status") in ("failed", "interrupted"):
        status = job["status"]
    elif info.get("finished"):
        status = "done"
    elif metrics or (run_dir / "last.pt").is_file():
        status = "unfinished"
    else:
        status = "started"
    best = info.get("best_mIoU", metrics.get("mIoU"))
    return {
        "dir": str(run_dir),
        "model": choices.get("model") or info.get("model") or "",  # the config name the user typed
        "data": choices.get("data") or info.get("data") or "",
        "experiment": choices.get("experiment") or "",
        "status": status,
        "iterations": info.get("iterations", metrics.get("iteration")),
        "max_iters": info.get("max_iters"),
        "best_mIoU": best if isinstance(best, (int, float)) and not math.isnan(best) else None,
        "last_mIoU": metrics.get("mIoU"),
        "updated": updated,
        "age": _age((now or time.time()) - updated),
        "error": job.get("error", ""),
    }


def format_rows(rows: list[dict], root: Path) -> str:
    def pct(v):
        return f"{100 * v:.2f}" if isinstance(v, (int, float)) else "-"

    table = [("run", "model", "data", "status", "iters", "best mIoU", "last mIoU", "updated")]
    for r in rows:
        iters = "-" if r["iterations"] is None else f"{r['iterations']}/{r['max_iters'] or '?'}"
        name = str(Path(r["dir"]).relative_to(root)) if Path(r["dir"]).is_relative_to(root) else r["dir"]
        table.append((name or ".", r["model"] or "-", r["data"] or "-", r["status"], iters,
                      pct(r["best_mIoU"]), pct(r["last_mIoU"]), r["age"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


SORTS = {
    "name": lambda r: r["dir"],
    "time": lambda r: r["updated"],
    "miou": lambda r: -1.0 if r["best_mIoU"] is None else r["best_mIoU"],
}


def run(cfg: DictConfig) -> list[dict]:
    root = Path(str(cfg.runs)).expanduser()
    if not root.is_dir():
        raise SegbenchError(f"no runs at {root}; pass runs=<folder holding run directories> "
                            f"(default: $SEGBENCH_RUNS or ./runs)")
    sort = str(cfg.get("sort", "name"))
    if sort not in SORTS:
        raise SegbenchError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    rows = sorted((describe(d) for d in find_run_dirs(root)), key=SORTS[sort], reverse=sort == "miou")
    status = cfg.get("status")
    if status:
        rows = [r for r in rows if r["status"] == status]
    if not rows:
        print(f"no runs below {root}")
        return rows
    print(format_rows(rows, root))
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(rows)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return rows


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


def swept_keys(args: list[str]) -> list[str]:
    """The keys a multirun command line sweeps: ``model=fcn8s,segnet`` or ``optim.lr=range(...)``."""
    keys = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
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
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        if (key in swept) if swept else (key not in NOT_A_NAME):
            items.append(f"{key}={value}")
    name = ",".join(items).replace("/", "_").replace("\\", "_") or f"job{num}"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
