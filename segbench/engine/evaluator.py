"""One evaluator for validation during training and for ``segbench eval``.

Both call :func:`evaluate` with the same model, data pipeline, precision and protocol, so
they print the same numbers for the same checkpoint. mIoU comes from one confusion matrix
accumulated over the whole split (and summed across processes under DDP).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from segbench.engine import build
from segbench.engine.checkpoint import load_checkpoint, load_model_weights, write_json
from segbench.engine.inference import predict
from segbench.errors import CheckpointError, SegbenchError
from segbench.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, protocol: DictConfig | dict | None = None,
             on_batch: Callable | None = None, progress: bool = True) -> ConfusionMatrix:
    """Run ``model`` over ``loader`` and return the (process-reduced) confusion matrix.

    ``on_batch(batch, pred)`` is called for every batch (visualisation, saving predictions).
    """
    protocol = protocol or {}
    scales = tuple(protocol.get("scales", (1.0,)))
    flip = bool(protocol.get("flip", False))
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch["label"].to(device, non_blocking=True)
        with build.autocast(device, precision):
            logits = predict(model, images, scales=scales, flip=flip)
        pred = logits.argmax(1)
        matrix.update(pred, labels)
        if on_batch is not None:
            on_batch(batch, pred)
    matrix.reduce()
    model.train(was_training)
    return matrix


def format_table(scores: dict, class_names) -> str:
    """Summary line plus a per-class IoU / Acc table, in percent."""
    def pct(v):
        return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.2f}"

    width = max(12, max(len(n) for n in class_names))
    lines = [
        f"aAcc {pct(scores['aAcc'])}  mAcc {pct(scores['mAcc'])}  "
        f"mIoU {pct(scores['mIoU'])}  fwIoU {pct(scores['fwIoU'])}",
        f"{'class':<{width}}    IoU     Acc",
    ]
    for name, iou, acc in zip(class_names, scores["IoU"], scores["Acc"]):
        lines.append(f"{name:<{width}} {pct(iou)}  {pct(acc)}")
    return "\n".join(lines)


def metrics_record(scores: dict, class_names, split: str, checkpoint: str, iteration: int,
                   protocol: dict, source: str) -> dict:
    return {
        "source": source,
        "split": split,
        "checkpoint": checkpoint,
        "iteration": iteration,
        "protocol": protocol,
        **{k: scores[k] for k in ("aAcc", "mAcc", "mIoU", "fwIoU")},
        "per_class": {n: {"IoU": i, "Acc": a} for n, i, a in zip(class_names, scores["IoU"], scores["Acc"])},
    }


def _find_checkpoint(cfg: DictConfig) -> Path:
    if cfg.get("ckpt"):
        return Path(cfg.ckpt)
    if not cfg.get("run"):
        raise SegbenchError("say which model to evaluate: segbench eval run=<run dir> (or ckpt=<file>)")
    run = Path(cfg.run)
    if not run.is_dir():
        raise CheckpointError(f"run directory not found: {run}")
    for name in (cfg.which, "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError(f"no checkpoint in {run} (looked for {cfg.which} and last.pt)")


def run(cfg: DictConfig) -> dict:
    """``segbench eval``: rebuild model + data from the run's saved config and score a split."""
    ckpt_path = _find_checkpoint(cfg)
    state = load_checkpoint(ckpt_path)
    if "config" not in state:
        raise CheckpointError(f"{ckpt_path} holds no config; was it written by segbench train?")
    run_cfg = OmegaConf.create(state["config"])
    if cfg.get("overrides"):
        run_cfg = OmegaConf.merge(run_cfg, OmegaConf.from_dotlist(list(cfg.overrides)))
    if cfg.get("data_root"):
        run_cfg.data.root = cfg.data_root
    split = cfg.split or run_cfg.data.val_split
    protocol = OmegaConf.to_container(cfg.protocol, resolve=True)

    device = build.resolve_device(cfg.device)
    model = build.build_model(run_cfg)
    load_model_weights(model, state, ckpt_path)
    model.to(device)
    channels_last = bool(run_cfg.trainer.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = build.build_dataset(run_cfg, split, train=False)
    loader = build.build_eval_loader(run_cfg, dataset)
    matrix = evaluate(model, loader, dataset.num_classes, device, run_cfg.trainer.precision,
                      channels_last, protocol)
    scores = matrix.compute()
    record = metrics_record(scores, dataset.class_names, split, str(ckpt_path),
                            int(state.get("iteration", -1)), protocol, source="eval")
    out_dir = ckpt_path.parent
    write_json(out_dir / "metrics.json", record)
    print(f"{dataset.name} {split} ({len(dataset)} images), checkpoint {ckpt_path}")
    print(format_table(scores, dataset.class_names))
    print(f"wrote {out_dir / 'metrics.json'}")
    return record
