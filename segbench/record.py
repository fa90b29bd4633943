"""``run.json``: a run directory's one record — its config, status, training summary, every evaluation.

One file, one schema (:data:`SCHEMA`), one writer (:func:`edit`: read, change one part, write
atomically, under a lock so training, ``segbench eval`` and a sweep never lose each other's
part) and one reader (:meth:`RunRecord.load`). Each writer owns its part:

* the trainer: ``config``, ``status`` (``running`` at start, ``finished`` / ``interrupted`` /
  ``failed`` at the end, with the iteration reached and ``max_iters``) and ``training`` (the
  recipe facts, the resumes, the latest validation);
* ``segbench eval``: one entry of ``evaluations`` per split x protocol x checkpoint — it never
  touches ``training``, so an evaluation never changes training's results;
* ``segbench bench``: ``bench`` (every measured row), in a run dir of its own (kind ``bench``);
* ``segbench sweep``: ``sweep`` (the job's number, overrides, attempts) and, for a job that failed
  before training, ``status`` and ``error``.

Reading never runs code and never opens a checkpoint: everything a report needs is here.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from segbench.errors import SegbenchError
from segbench.io import write_json

FILE = "run.json"
SCHEMA = "segbench.run/1"
STATUSES = ("running", "finished", "failed", "interrupted")


@dataclass
class Evaluation:
    """One scoring of one checkpoint: a split under a protocol, by training's validation
    (``source="train"``) or ``segbench eval``. ``scores`` is the confusion matrix's
    (:meth:`segbench.metrics.ConfusionMatrix.compute`: aAcc, mAcc, mIoU, fwIoU, per-class IoU
    and Acc lists in ``class_names`` order, BF when measured), fractions, NaN for absent classes."""
    source: str
    split: str
    protocol: dict
    protocol_name: str  # its short form, e.g. "MS(0.5,1)+flip OS8"
    checkpoint: str
    iteration: int
    scores: dict
    class_names: list

    def same_setting(self, other: Evaluation) -> bool:
        """Same split, protocol and checkpoint file: a new scoring replaces the old one."""
        return (self.split, self.protocol, Path(self.checkpoint).name) == (
            other.split, other.protocol, Path(other.checkpoint).name)


@dataclass
class Training:
    """What training measured: ``summary`` (model, data, global batch, crop, precision, params,
    train time, peak memory, best value of ``trainer.select_by``...), each resume that changed
    something, and the latest validation (written with the checkpoint it scored)."""
    summary: dict = field(default_factory=dict)
    resumes: list = field(default_factory=list)
    validation: Evaluation | None = None


@dataclass
class SweepJob:
    num: int
    overrides: list
    attempts: int = 1


@dataclass
class RunRecord:
    kind: str = "train"  # what made the run dir: train (also a sweep's jobs) | eval (a loose checkpoint) | bench
    status: str = "running"
    iteration: int = 0
    max_iters: int | None = None
    error: str = ""
    config: dict = field(default_factory=dict)  # resolved, as the run trains with it
    choices: dict = field(default_factory=dict)  # the config file each group came from: model=unet_small, ...
    training: Training | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    sweep: SweepJob | None = None
    bench: dict | None = None  # what `segbench bench` measured (kind "bench")

    # ---- the one reader --------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        """The record of ``run_dir``; a missing, malformed or foreign file is one :class:`SegbenchError`."""
        path = Path(run_dir) / FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SegbenchError(f"{path}: no run record (not a run directory of this segbench)") from None
        except (OSError, ValueError) as err:
            raise SegbenchError(f"{path}: unreadable run record ({err})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data, where: str | Path = FILE) -> RunRecord:
        schema = data.get("schema") if isinstance(data, dict) else None
        if not isinstance(schema, str) or not schema.startswith("segbench.run/"):
            raise SegbenchError(f"{where}: not a segbench run record (no \"schema\": \"{SCHEMA}\")")
        if schema != SCHEMA:
            raise SegbenchError(f"{where}: run record schema {schema!r}, this segbench reads {SCHEMA!r}; "
                                f"it was written by another version of segbench (upgrade to read it)")
        try:
            known = {f.name for f in fields(cls)}
            record = cls(**{k: v for k, v in data.items() if k in known})
            record.training = _training(record.training)
            record.evaluations = [Evaluation(**e) for e in record.evaluations]
            record.sweep = SweepJob(**record.sweep) if record.sweep else None
        except (TypeError, AttributeError) as err:
            raise SegbenchError(f"{where}: malformed run record ({err})") from None
        if record.status not in STATUSES:
            raise SegbenchError(f"{where}: malformed run record (status {record.status!r}; one of {STATUSES})")
        training = record.training or Training()
        parts = [record.config, training.summary, *(e.scores for e in [*record.evaluations, training.validation] if e)]
        if not all(isinstance(part, dict) for part in parts):
            raise SegbenchError(f"{where}: malformed run record (config, summary and scores must be objects)")
        return record

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, run_dir: str | Path) -> Path:
        """Atomic: a crash leaves the previous record, never half of one."""
        return write_json(Path(run_dir) / FILE, self.to_dict())


def _training(data) -> Training | None:
    if data is None:
        return None
    training = Training(**data)
    if training.validation is not None:
        training.validation = Evaluation(**training.validation)
    return training


def validation_of(run_dir: str | Path) -> Evaluation | None:
    """The latest validation of the training in ``run_dir`` (None: no record, or none yet)."""
    if not (Path(run_dir) / FILE).is_file():
        return None
    training = RunRecord.load(run_dir).training
    return training.validation if training else None


# ---- the one writer ------------------------------------------------------------------------------
@contextlib.contextmanager
def edit(run_dir: str | Path, **new):
    """``with edit(run_dir) as record: ...``: the current record (or a new one made with ``new``),
    written back atomically when the block ends without an error. The run dir's lock (``flock``
    on the directory itself: no lock file) keeps two writers from losing each other's part."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        record = RunRecord.load(run_dir) if (run_dir / FILE).exists() else RunRecord(**new)
        yield record
        record.save(run_dir)
    finally:
        os.close(fd)  # releases the lock


def record_training(run_dir: str | Path, iteration: int, max_iters: int, status: str | None = None,
                    error: str = "", config: dict | None = None, summary: dict | None = None,
                    resumes: list | None = None, validation: Evaluation | None = None) -> None:
    """The trainer's part: the iteration reached; a new ``status`` (and its ``error``); the
    ``config`` when a run starts; the ``summary`` + ``resumes`` with each checkpoint; a validation."""
    with edit(run_dir) as run:
        run.kind, run.iteration, run.max_iters = "train", iteration, max_iters
        if status:
            run.status, run.error = status, error
        if config is not None:
            run.config = config
        if summary is not None or validation is not None:
            run.training = run.training or Training()
        if summary is not None:
            run.training.summary, run.training.resumes = summary, list(resumes or [])
        if validation is not None:
            run.training.validation = validation


def error_text(err: BaseException) -> str:
    """How a failure is recorded: ``<Type>: <message>``."""
    return f"{type(err).__name__}: {err}".strip()
