"""Every run below a folder as one typed row: what ``segbench report``, ``segbench runs`` and the
sweep's summary table read.

One walk finds the run directories (those holding ``run.json``), :func:`row` turns each
:class:`~segbench.record.RunRecord` into a :class:`RunRow`, and the three verbs render their
tables from those rows through :mod:`segbench.tables`. Nothing else is opened: no checkpoint,
no ``.hydra/``. One status vocabulary for all three:

* ``done``: training reached ``max_iters`` (or an evaluation of a loose checkpoint finished);
* ``unfinished``: the record says running: training is under way, or its process ended without
  a word (killed, power loss); the time of the last update tells which is likely;
* ``interrupted``: a signal stopped it after writing ``last.pt``; resume it;
* ``failed``: the ``error`` column says why;
* ``unreadable``: ``run.json`` could not be read (the error says why).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from segbench.errors import SegbenchError
from segbench.record import FILE, Evaluation, RunRecord, TrainingSummary

STATUS = {"finished": "done", "running": "unfinished", "interrupted": "interrupted", "failed": "failed"}
PERCENT_METRICS = ("mIoU", "mAcc", "aAcc", "fwIoU", "BF")  # in table order


@dataclass
class RunRow:
    name: str  # the run dir, relative to the folder walked
    status: str  # done | unfinished | interrupted | failed | unreadable (report adds: not run)
    error: str = ""
    kind: str = "train"  # segbench.record.RunRecord.kind
    experiment: str = ""  # the paper recipe (its ``paper.experiment``), if any
    paper: dict | None = None
    smoke: bool = False
    model: str = ""  # the model config chosen (model=pspnet), else its class
    model_class: str = ""  # e.g. PSPNet: what the report's runs table names (fcn8s and fcn32s are both FCN)
    data: str = ""
    iteration: int | None = None
    max_iters: int | None = None
    summary: TrainingSummary = field(default_factory=TrainingSummary)  # the training's recipe facts
    validation: Evaluation | None = None  # the training's latest
    evaluations: list[Evaluation] = field(default_factory=list)  # segbench eval's
    overrides: list[str] = field(default_factory=list)  # a sweep job's
    job: int = -1  # a sweep job's number
    dir: Path | None = None
    updated: float = 0.0  # when run.json was last written (seconds since the epoch)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def percent(self, evaluation: Evaluation | None, metric: str) -> float | None:
        """``metric`` of ``evaluation`` in percent; None unless the run is done (an unfinished run is
        never shown as a result) or when the metric is absent or NaN."""
        value = number(evaluation.scores.get(metric)) if evaluation and self.done else None
        return None if value is None else 100 * value

    @property
    def iters(self) -> str:
        return "" if self.iteration is None else f"{self.iteration}/{self.max_iters or '?'}"

    @property
    def params_m(self) -> str:
        params = self.summary.params
        return f"{params['total'] / 1e6:.2f}" if isinstance(params, dict) else ""

    @property
    def peak_mem_gb(self) -> str:
        peak = self.summary.peak_memory_bytes
        return f"{peak / 2**30:.2f}" if peak else ""


def find(root: Path) -> list[Path]:
    """The run directories below ``root`` (``root`` included), in one walk (hidden folders skipped)."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if FILE in files:
            found.append(Path(here))
    return sorted(found)


def rows(root: Path) -> list[RunRow]:
    """One row per training (or evaluation) run; ``segbench bench`` records measure, not train: left out."""
    root = Path(root)
    return [r for r in (row(run_dir, root) for run_dir in find(root)) if r.kind != "bench"]


def row(run_dir: Path, root: Path) -> RunRow:
    name = str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir)
    updated = (run_dir / FILE).stat().st_mtime
    try:
        record = RunRecord.load(run_dir)
    except SegbenchError as err:
        return RunRow(name, "unreadable", error=str(err), dir=run_dir, updated=updated)
    config, training = record.config, record.training
    summary = training.summary if training else TrainingSummary()
    paper = config.get("paper") or None
    model_class = str((config.get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    data = record.choices.get("data") or (config.get("data") or {}).get("name", "")
    return RunRow(
        name=name or ".", kind=record.kind, status=STATUS[record.status], error=record.error,
        experiment=str((paper or {}).get("experiment") or ""), paper=paper, smoke=bool(config.get("smoke")),
        model=record.choices.get("model") or model_class, model_class=model_class, data=str(data),
        iteration=record.iteration, max_iters=record.max_iters,
        summary=summary, validation=training.validation if training else None,
        evaluations=record.evaluations, overrides=record.sweep.overrides if record.sweep else [],
        job=record.sweep.num if record.sweep else -1, dir=run_dir, updated=updated)


# ---- cells every table writes the same way ------------------------------------------------------
def number(value) -> float | None:
    """``value`` when it is a real number; None when missing, not a number, or NaN (a class the
    split never shows scores NaN)."""
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def pct(value: float | None) -> str:
    """A percentage cell: two decimals, empty when there is no number."""
    return "" if value is None else f"{value:.2f}"


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
