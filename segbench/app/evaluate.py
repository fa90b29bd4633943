"""``segbench eval``: the app layer around :func:`segbench.engine.evaluator.evaluate`.

Finds the checkpoint (``run=<dir>`` / ``ckpt=<file>``), opens it as data only, checks the
config saved in it before anything is built (:func:`load_run`, shared with ``segbench predict``),
rebuilds model and data from it, scores a split under the run's own protocol (or the command
line's), prints the scores, then adds them to the ``evaluations`` of the run's ``run.json``
(:mod:`segbench.record`), replacing an earlier one of the same split, protocol and checkpoint, or
writes them to ``output=<file.json>``. Training's part of the record is never touched.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from segbench.app import saved
from segbench.engine import build
from segbench.engine.device import resolve_channels_last, resolve_device, resolve_precision
from segbench.engine.checkpoint import load_checkpoint, load_model_weights
from segbench.engine.evaluator import PredictionWriter, evaluate, format_table, metrics_record
from segbench.data.normalization import Normalization
from segbench.engine.protocol import Protocol
from segbench.errors import CheckpointError, SegbenchError, os_error_message
from segbench.io import write_json
from segbench.record import Evaluation, RunRecord, edit
from segbench.trust import check_config
from segbench.app.validate import check_eval


def find_checkpoint(cfg: DictConfig) -> Path:
    if cfg.get("ckpt"):
        return Path(cfg.ckpt)
    if not cfg.get("run"):
        raise SegbenchError("say which model to evaluate: segbench eval run=<run dir> (or ckpt=<file>)")
    run = Path(cfg.run)
    if not run.is_dir() or not any(run.iterdir()):  # empty: Hydra just made it for this command
        raise CheckpointError(f"run directory not found: {run}")
    if (run / cfg.which).is_file():
        return run / cfg.which
    if cfg.which == "best.pt" and (run / "last.pt").is_file():  # the default only: a run validated never
        print(f"no best.pt in {run}; evaluating last.pt")
        return run / "last.pt"
    present = sorted(p.name for p in run.glob("*.pt"))
    raise CheckpointError(f"no checkpoint {cfg.which} in {run} (it holds: {', '.join(present) or 'no .pt file'}); "
                          f"pass which=<one of them> or ckpt=<file>")


def load_run(cfg: DictConfig, verb: str = "eval") -> tuple[Path, dict, DictConfig]:
    """(checkpoint path, its state, its saved config with ``overrides=`` / ``data_root=`` applied and
    checked) for ``run=`` / ``ckpt=``: the checkpoint is opened as data only (``trust_checkpoint=true``
    opens a legacy pickle, running code from the file) and its config checked before anything is built;
    an override the command would ignore is refused (:func:`segbench.app.saved.for_evaluation`)."""
    ckpt_path = find_checkpoint(cfg)
    state = load_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))
    if "config" not in state:
        raise CheckpointError(f"{ckpt_path} holds no config (was it written by segbench train?); {verb} "
                              f"rebuilds model, classes and normalisation from it")
    config = saved.for_evaluation(state["config"], list(cfg.get("overrides") or []), cfg.get("data_root"),
                                  f"{ckpt_path} (its saved config)", verb)
    run_cfg = OmegaConf.create(config)
    check_config(run_cfg, f"{ckpt_path} (its saved config)")  # before anything is instantiated or imported
    return ckpt_path, state, run_cfg


def resolve_protocol(cfg: DictConfig, run_cfg: DictConfig) -> dict:
    """The run's own ``eval_protocol`` (what training validated with), with every non-null
    ``protocol.*`` key of the eval command on top; ``postprocess=crf|none`` replaces the
    post-processing."""
    def plain(node) -> dict:
        return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node or {})

    protocol = plain(run_cfg.get("eval_protocol"))
    for key, value in plain(cfg.get("protocol")).items():
        if value is not None:
            protocol[key] = value
    if cfg.get("postprocess") is not None:  # postprocess=<name> was chosen on the command line
        post = plain(cfg.postprocess)
        protocol["postprocess"] = post if post.get("_target_") else None
    return protocol


def eval_speed(cfg: DictConfig, state: dict, run_cfg: DictConfig, device: torch.device) -> tuple[str, bool]:
    """(precision, channels_last) of ``segbench eval``: the training's own (what its ``auto``
    resolved to, saved in the checkpoint), unless ``precision=`` / ``channels_last=`` say
    otherwise; checkpoints without that record resolve the run's ``trainer`` keys here. fp16
    (CUDA only) evaluated on a CPU falls back to this CPU's ``auto``."""
    saved = state.get("speed") or {}
    precision = cfg.get("precision") or saved.get("precision") or str(run_cfg.trainer.precision)
    if precision == "fp16" and device.type != "cuda" and not cfg.get("precision"):
        precision = "auto"
    precision = resolve_precision(device, str(precision))
    channels_last = cfg.get("channels_last")
    if channels_last is None:
        channels_last = saved.get("channels_last", run_cfg.trainer.get("channels_last", "auto"))
    return precision, resolve_channels_last(device, precision, channels_last)


def run(cfg: DictConfig) -> Evaluation:
    """``segbench eval``: rebuild model + data from the run's saved config and score a split
    under the run's evaluation protocol (or the one given on the command line)."""
    check_eval(cfg)
    output = output_file(cfg)
    ckpt_path, state, run_cfg = load_run(cfg)
    split = cfg.split or run_cfg.data.val_split
    protocol = Protocol.from_config(resolve_protocol(cfg, run_cfg))

    device = resolve_device(cfg.device)
    model = build.build_model(run_cfg)
    load_model_weights(model, state, ckpt_path)
    model.to(device)
    precision, channels_last = eval_speed(cfg, state, run_cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = build.build_dataset(run_cfg, split, train=False)
    loader = build.build_eval_loader(run_cfg, dataset)
    out_dir = ckpt_path.parent
    normalization = Normalization.from_data_config(run_cfg.data)
    writer = None
    if cfg.get("save_predictions"):
        writer = PredictionWriter(dataset, out_dir / "predictions" / split, str(cfg.save_predictions),
                                  int(cfg.get("num_panels", 4)))
    matrix = evaluate(model, loader, dataset.num_classes, device, precision, channels_last, protocol,
                      on_batch=writer, progress=bool(cfg.get("progress", True)), normalization=normalization)
    scores = matrix.compute()
    record = metrics_record(scores, dataset.class_names, split, str(ckpt_path),
                            int(state.get("iteration", -1)), protocol, source="eval")
    # the scores first: whatever happens to the record, the user has seen them
    print(f"{dataset.name} {split} ({len(dataset)} images), checkpoint {ckpt_path}")
    print(f"protocol: {protocol.describe()}; {precision}{', channels_last' if channels_last else ''}")
    print(format_table(scores, dataset.class_names), flush=True)
    if writer is not None:
        print(f"wrote {len(writer.written)} predictions ({cfg.save_predictions}) and {writer.panels} panels "
              f"to {writer.out_dir}")
    save_evaluation(output, out_dir, record, state["config"])
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

