"""``run.json``: a run directory's one record — its config, status, training summary, every evaluation.

One file, one schema (:data:`SCHEMA`), one writer (:func:`edit`: read, change one part, write
atomically, under a lock so training, ``segbench eval`` and a sweep never lose each other's
part) and one reader (:meth:`RunRecord.load`). Each writer owns its part:

* the trainer: ``config``, ``status`` (``running`` at start, ``finished`` / ``interrupted`` /
  ``failed`` at the end, with the iteration reached and ``max_iters``) and ``training`` (the
  recipe facts with the best validation, :class:`TrainingSummary`; the resumes; the latest
  validation);
* ``segbench eval``: one entry of ``evaluations`` per split x protocol x checkpoint — it never
  touches ``training``, so an evaluation never changes training's results;
* ``segbench bench``: ``bench`` (every measured row, :class:`Bench`), in a run dir of its own
  (kind ``bench``);
* ``segbench sweep``: ``sweep`` (the job's number, overrides, attempts) and, for a job that failed
  before training, ``status`` and ``error``.

Reading never runs code and never opens a checkpoint: everything a report needs is here. The
typed parts read a record of an older or newer segbench alike: keys they do not know are left
out, keys they miss take their defaults (:func:`_known`).
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


def _known(cls, data: dict):
    """``cls`` from the keys of ``data`` it has fields for (other keys: another version's)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Best:
    """The best validation so far by ``trainer.select_by`` (what ``best.pt`` holds): the metric it
    names (mIoU; aAcc for SegNet §3.2), its value (a fraction) and the iteration."""
    metric: str
    value: float
    iteration: int | None = None  # None: from a record that did not say


def read_best(data: dict, select_by: str) -> Best | None:
    """The best validation a run.json summary or a checkpoint holds: ``best`` ({metric, value,
    iteration}), or, written before it named its metric, ``best_mIoU``: the value of the run's
    ``trainer.select_by`` (``select_by``), -1 = none yet."""
    best = data.get("best")
    if isinstance(best, dict):
        return _known(Best, best)
    value = data.get("best_mIoU")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return Best(select_by, value)
    return None


@dataclass
class TrainingSummary:
    """The recipe facts of a training, rewritten with each checkpoint."""
    model: str = ""  # the model class's _target_
    data: str = ""
    global_batch: int | None = None
    crop_size: list | int | None = None
    precision: str = ""  # what `auto` resolved to
    channels_last: bool | None = None
    grad_checkpoint: bool = False
    device: str = ""
    world_size: int = 1
    params: dict | None = None  # total, trainable, backbone, head
    train_time_s: float | None = None
    peak_memory_bytes: int | None = None  # CUDA only
    best: Best | None = None

    @classmethod
    def from_dict(cls, data: dict, select_by: str = "mIoU") -> TrainingSummary:
        """A summary as run.json holds it (an old one's ``best_mIoU``: :func:`read_best`)."""
        summary = _known(cls, data)
        summary.best = read_best(data, select_by)
        return summary


@dataclass
class Training:
    """What training measured: its ``summary``, each resume that changed something, and the latest
    validation (written with the checkpoint it scored)."""
    summary: TrainingSummary = field(default_factory=TrainingSummary)
    resumes: list = field(default_factory=list)
    validation: Evaluation | None = None


@dataclass
class Bench:
    """What ``segbench bench`` measured (:mod:`segbench.app.bench`): where, and one record per model."""
    device: str = ""
    torch: str = ""
    threads: int | None = None
    bench: dict = field(default_factory=dict)  # the bench settings it ran with
    skipped: list = field(default_factory=list)  # settings left out, and why
    models: list = field(default_factory=list)  # per model: params, FLOPs, per-setting rows
    paper: dict = field(default_factory=dict)  # model -> the published numbers it is compared with


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
    bench: Bench | None = None  # what `segbench bench` measured (kind "bench")

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
            record.training = _training(record.training, _select_by(record.config))
            record.evaluations = [Evaluation(**e) for e in record.evaluations]
            record.sweep = SweepJob(**record.sweep) if record.sweep else None
            record.bench = _known(Bench, record.bench) if record.bench is not None else None
        except (TypeError, AttributeError) as err:
            raise SegbenchError(f"{where}: malformed run record ({err})") from None
        if record.status not in STATUSES:
            raise SegbenchError(f"{where}: malformed run record (status {record.status!r}; one of {STATUSES})")
        training = record.training or Training()
        parts = [record.config, *(e.scores for e in [*record.evaluations, training.validation] if e)]
        if not all(isinstance(part, dict) for part in parts):
            raise SegbenchError(f"{where}: malformed run record (config, summary and scores must be objects)")
        return record

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, run_dir: str | Path) -> Path:
        """Atomic: a crash leaves the previous record, never half of one."""
        return write_json(Path(run_dir) / FILE, self.to_dict())


def _training(data, select_by: str) -> Training | None:
    if data is None:
        return None
    training = Training(**data)
    if not isinstance(training.summary, dict):
        raise TypeError("summary must be an object")
    training.summary = TrainingSummary.from_dict(training.summary, select_by)
    if training.validation is not None:
        training.validation = Evaluation(**training.validation)
    return training


def _select_by(config) -> str:
    """The run's ``trainer.select_by`` (what an old ``best_mIoU`` held); mIoU when not recorded."""
    trainer = config.get("trainer") if isinstance(config, dict) else None
    select_by = trainer.get("select_by") if isinstance(trainer, dict) else None
    return select_by if isinstance(select_by, str) else "mIoU"


def validation_of(run_dir: str | Path) -> Evaluation | None:
    """The latest validation of the training in ``run_dir`` (None: no record, or none yet)."""
    if not (Path(run_dir) / FILE).is_file():
        return None
    training = RunRecord.load(run_dir).training
    return training.validation if training else None


def recorded_status(run_dir: str | Path) -> str | None:
    """The status run.json records for ``run_dir`` (None: no record)."""
    return RunRecord.load(run_dir).status if (Path(run_dir) / FILE).is_file() else None


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


def error_text(err: BaseException) -> str:
    """How a failure is recorded: ``<Type>: <message>``."""
    return f"{type(err).__name__}: {err}".strip()
