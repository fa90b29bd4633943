"""``segbench eval``: the app layer around :func:`segbench.engine.evaluator.evaluate_with`.

Loads the checkpoint (``run=<dir>`` / ``ckpt=<file>``) with the loader ``segbench predict`` uses
(:func:`segbench.app.loaded.load`: data only, its saved config checked before anything is built,
the model with its precision, memory format, normalisation and protocol), rebuilds the data from
its config, scores a split under the run's own protocol (or the command line's), prints the
scores, then adds them to the ``evaluations`` of the run's ``run.json`` (:mod:`segbench.record`),
replacing an earlier one of the same split, protocol and checkpoint, or writes them to
``output=<file.json>``. Training's part of the record is never touched.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segbench.app.loaded import load
from segbench.app.validate import check_eval
from segbench.engine import build
from segbench.engine.evaluator import PredictionWriter, evaluate_with, format_table, metrics_record
from segbench.errors import SegbenchError, os_error_message
from segbench.io import write_json
from segbench.record import Evaluation, RunRecord, edit


def run(cfg: DictConfig) -> Evaluation:
    """``segbench eval``: rebuild model + data from the run's saved config and score a split
    under the run's evaluation protocol (or the one given on the command line)."""
    check_eval(cfg)
    output = output_file(cfg)
    loaded = load(cfg, verb="eval")
    run_cfg, settings = loaded.config, loaded.settings
    split = cfg.split or run_cfg.data.val_split
    dataset = build.build_dataset(run_cfg, split, train=False)
    loader = build.build_eval_loader(run_cfg, dataset)
    out_dir = loaded.checkpoint.parent
    writer = None
    if cfg.get("save_predictions"):
        writer = PredictionWriter(dataset, out_dir / "predictions" / split, str(cfg.save_predictions),
                                  int(cfg.get("num_panels", 4)))
    matrix = evaluate_with(loaded.inference, loader, dataset.num_classes, on_batch=writer,
                           progress=bool(cfg.get("progress", True)))
    scores = matrix.compute()
    record = metrics_record(scores, dataset.class_names, split, str(loaded.checkpoint), loaded.iteration,
                            settings.protocol, source="eval")
    # the scores first: whatever happens to the record, the user has seen them
    print(f"{dataset.name} {split} ({len(dataset)} images), checkpoint {loaded.checkpoint}")
    print(f"protocol: {settings.protocol.describe()}; {settings.precision}"
          f"{', channels_last' if settings.channels_last else ''}")
    print(format_table(scores, dataset.class_names), flush=True)
    if writer is not None:
        print(f"wrote {len(writer.written)} predictions ({cfg.save_predictions}) and {writer.panels} panels "
              f"to {writer.out_dir}")
    save_evaluation(output, out_dir, record, loaded.saved_config)
    return record


def output_file(cfg: DictConfig) -> Path | None:
    """``output=<file.json>``: where the evaluation goes instead of the run's run.json (a read-only
    run dir, a checkpoint from elsewhere); checked before any work, never replacing a file."""
    if not cfg.get("output"):
        return None
    path = Path(str(cfg.output)).expanduser()
    if path.exists():
        raise SegbenchError(f"output={path} exists; segbench eval does not replace it: choose another file")
    if not path.parent.is_dir():
        raise SegbenchError(f"output={path}: no folder {path.parent}")
    return path


def save_evaluation(output: Path | None, run_dir: Path, evaluation: Evaluation, config: dict) -> None:
    """Into ``output`` (a run record of kind ``eval`` holding this one evaluation) when given, else
    into the run's run.json; a failed write says where else the printed scores can go."""
    if output is not None:
        record = RunRecord(kind="eval", status="finished", iteration=evaluation.iteration, config=config,
                           evaluations=[evaluation])
        write_json(output, record.to_dict())  # the run.json format: `segbench runs` reads it as one
        print(f"wrote {output}: {evaluation.split}, {evaluation.protocol_name}, {Path(evaluation.checkpoint).name}")
        return
    try:
        add_evaluation(run_dir, evaluation, config)
    except OSError as err:
        raise SegbenchError(f"the scores above are not recorded in {run_dir / 'run.json'}: {os_error_message(err)}; "
                            f"or write them to another file with output=<file.json>") from None
    print(f"added to {run_dir / 'run.json'}: {evaluation.split}, {evaluation.protocol_name}, "
          f"{Path(evaluation.checkpoint).name}")


def add_evaluation(run_dir: Path, evaluation: Evaluation, config: dict) -> None:
    """The run's record gains (or replaces) this evaluation; training's part stays as it is. A
    checkpoint from elsewhere (no record beside it) gets a record of kind ``eval``."""
    with edit(run_dir, kind="eval", status="finished", iteration=evaluation.iteration, config=config) as record:
        record.evaluations = [e for e in record.evaluations if not e.same_setting(evaluation)] + [evaluation]

