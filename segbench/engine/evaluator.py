"""One evaluator for validation during training and for ``segbench eval``.

Both run the model through :class:`segbench.engine.inference.BatchInference` (the per-batch
path ``segbench predict`` runs too) with the same data pipeline, precision, memory format and
protocol, so they print the same numbers for the same checkpoint, and the predictions ``segbench
eval`` writes are the ones ``segbench predict`` writes for the same images. Training calls
:func:`evaluate` with its own settings; ``segbench eval`` calls :func:`evaluate_with` with the
checkpoint's (:mod:`segbench.app.loaded`). mIoU comes from one confusion matrix accumulated over
the whole split (and summed across processes under DDP).

The protocol (whole / sliding window, scales, flip, output stride, CRF, boundary F1) is one
config block, ``eval_protocol`` of the run or ``protocol.*`` of ``segbench eval``, interpreted
by :mod:`segbench.engine.inference`. ``segbench eval`` defaults to the run's own protocol, adds
its scores to the run's ``run.json`` (never changing training's), and can write the predictions.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from segbench.data.base import voc_colormap
from segbench.data.normalization import Normalization, rgb_images
from segbench.engine.inference import BatchInference, InferenceSettings, to_probs
from segbench.engine.protocol import Protocol, describe
from segbench.errors import SegbenchError
from segbench.io import write_png
from segbench.metrics import ConfusionMatrix
from segbench.metrics.boundary import BoundaryF1
from segbench.metrics.isbi import ISBIErrors
from segbench.metrics.isbi import METRICS as ISBI_METRICS
from segbench.record import Evaluation
from segbench.trust import confined_path

SAVE_MODES = ("color", "labelIds", "trainIds")


class EvalMatrix(ConfusionMatrix):
    """The split's confusion matrix plus, when the protocol asks for them, the boundary F1 and
    ISBI 2012 accumulators; ``compute()`` adds ``BF`` / ``warping_error``, ``rand_error``,
    ``pixel_error`` to the confusion-matrix scores."""

    def __init__(self, num_classes: int, device=None, boundary: BoundaryF1 | None = None,
                 isbi: ISBIErrors | None = None):
        super().__init__(num_classes, device=device)
        self.boundary = boundary
        self.isbi = isbi

    def reduce(self) -> None:
        super().reduce()
        if self.boundary is not None:
            self.boundary.reduce()
        if self.isbi is not None:
            self.isbi.reduce()

    def compute(self) -> dict:
        scores = super().compute()
        if self.boundary is not None:
            scores["BF"] = self.boundary.compute()
        if self.isbi is not None:
            scores.update(self.isbi.compute())
        return scores


def evaluate(model, loader, num_classes: int, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, protocol: DictConfig | Mapping | Protocol | None = None,
             on_batch: Callable | None = None, progress: bool = True,
             normalization: Normalization | None = None) -> EvalMatrix:
    """Run ``model`` over ``loader`` under ``protocol`` and return the (process-reduced)
    confusion matrix (with boundary F1 when ``protocol.boundary_f1``): :func:`evaluate_with` of
    the model run with these settings (``precision`` and ``channels_last`` resolved).

    ``normalization`` (:meth:`Normalization.from_data_config` of ``cfg.data``) turns the
    loader's uint8 images into the network's input on ``device``, as the training step does
    (None: the batches hold ready float inputs).
    """
    settings = InferenceSettings(precision, channels_last, normalization, Protocol.from_config(protocol))
    return evaluate_with(BatchInference(model, device, settings), loader, num_classes, on_batch, progress)


@torch.inference_mode()  # no autograd bookkeeping at all (cheaper than no_grad)
def evaluate_with(inference: BatchInference, loader, num_classes: int, on_batch: Callable | None = None,
                  progress: bool = True) -> EvalMatrix:
    """The split's (process-reduced) confusion matrix of ``inference``'s model and settings, each
    batch through the per-batch path ``segbench predict`` runs too.

    ``on_batch(batch, pred)`` is called for every batch (visualisation, saving predictions). A
    post-processing step such as the dense CRF gets the batch's uint8 images themselves.
    """
    model, device, protocol = inference.model, inference.device, inference.settings.protocol
    boundary = BoundaryF1(protocol.bf_tolerance) if protocol.boundary_f1 else None
    membrane = protocol.isbi_errors
    isbi = ISBIErrors() if membrane is not None else None
    was_training = model.training
    model.eval()
    matrix = EvalMatrix(num_classes, device=device, boundary=boundary, isbi=isbi)
    try:
        bar = tqdm(loader, desc=f"eval [{protocol.describe()}]", leave=False, disable=not progress,
                   dynamic_ncols=True)
        for batch in bar:
            scores = inference.scores(batch["image"])
            labels = batch["label"].to(device, non_blocking=True)
            rgb = rgb_images(batch["image"]) if inference.postprocess is not None else None
            pred, probs = inference.labels(scores, rgb)
            matrix.update(pred, labels)
            if boundary is not None:
                boundary.update(pred, labels)
            if isbi is not None:  # the challenge scores the membrane probability, not the argmax
                probs = to_probs(scores, protocol) if probs is None else probs
                isbi.update(probs[:, membrane], labels != membrane)
            if on_batch is not None:
                on_batch(batch, pred)
    finally:
        model.train(was_training)
    matrix.reduce()
    return matrix


def format_table(scores: dict, class_names) -> str:
    """Summary line plus a per-class IoU / Acc table, in percent."""
    def pct(v):
        return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.2f}"

    width = max(12, max(len(n) for n in class_names))
    summary = (f"aAcc {pct(scores['aAcc'])}  mAcc {pct(scores['mAcc'])}  "
               f"mIoU {pct(scores['mIoU'])}  fwIoU {pct(scores['fwIoU'])}")
    if "BF" in scores:
        summary += f"  BF {pct(scores['BF'])}"
    lines = [summary]
    if all(name in scores for name in ISBI_METRICS):
        lines.append(isbi_line(scores))
    lines.append(f"{'class':<{width}}    IoU     Acc")
    for name, iou, acc in zip(class_names, scores["IoU"], scores["Acc"]):
        lines.append(f"{name:<{width}} {pct(iou)}  {pct(acc)}")
    return "\n".join(lines)


def isbi_line(scores: dict) -> str:
    """The ISBI 2012 challenge's errors as U-Net's Table 1 prints them (fractions, lower is better)."""
    return (f"ISBI 2012 errors: warping {scores['warping_error']:.7f}  Rand {scores['rand_error']:.4f}  "
            f"pixel {scores['pixel_error']:.4f}")


def protocol_record(protocol) -> dict:
    """The protocol as run.json stores it (normalised, every key explicit)."""
    try:
        return Protocol.from_config(protocol).to_dict()
    except SegbenchError:
        return dict(protocol or {})


def metrics_record(scores: dict, class_names, split: str, checkpoint: str, iteration: int,
                   protocol: dict, source: str) -> Evaluation:
    """One scoring as run.json stores it (:class:`segbench.record.Evaluation`)."""
    stored = protocol_record(protocol)
    return Evaluation(source, split, stored, describe(stored), checkpoint, iteration, scores, list(class_names))


class PredictionWriter:
    """``on_batch`` hook of ``segbench eval save_predictions=...``: one PNG per image under
    ``out_dir`` and ``num_panels`` image | ground truth | prediction panels under ``panels/``.

    * ``color``: the dataset's palette (``dataset.colorize``);
    * ``labelIds``: the benchmark's submission encoding, ``dataset.save_prediction`` /
      ``dataset.encode_prediction`` (Cityscapes label ids, VOC palette indices); raw train ids
      when the dataset defines neither;
    * ``trainIds``: the raw train ids as grey PNG.

    The panels show the batch's uint8 images as read (every normalisation, LCN included).
    """

    def __init__(self, dataset, out_dir: Path, mode: str, num_panels: int = 4):
        if mode not in SAVE_MODES:
            raise SegbenchError(f"save_predictions must be one of {', '.join(SAVE_MODES)}, got {mode!r}")
        self.dataset, self.out_dir, self.mode, self.num_panels = dataset, Path(out_dir), mode, num_panels
        self.index = 0
        self.panels = 0
        self.written: list[Path] = []

    def filename(self, index: int, sample_id: str) -> str:
        name = getattr(self.dataset, "prediction_filename", None)
        return Path(name(index)).with_suffix(".png").name if callable(name) else f"{sample_id}.png"

    def colorize(self, label: np.ndarray) -> np.ndarray:
        colorize = getattr(self.dataset, "colorize", None)
        if callable(colorize):
            return colorize(label)
        return voc_colormap()[label]

    def __call__(self, batch: dict, pred: torch.Tensor) -> None:
        preds = pred.detach().cpu().numpy().astype(np.uint8)
        images = None
        for i, p in enumerate(preds):
            index, self.index = self.index, self.index + 1
            sample_id = str(batch["id"][i]) if "id" in batch else f"{index:06d}"
            # an id from a list file never names a file outside out_dir
            path = confined_path(self.out_dir, self.filename(index, sample_id), source=f"sample id {sample_id!r}")
            if self.mode == "color":
                write_png(self.colorize(p), path)
            elif self.mode == "labelIds" and callable(getattr(self.dataset, "save_prediction", None)):
                self.dataset.save_prediction(p, path)
            elif self.mode == "labelIds" and callable(getattr(self.dataset, "encode_prediction", None)):
                write_png(self.dataset.encode_prediction(p), path)
            else:
                write_png(p, path)
            self.written.append(path)
            if self.panels < self.num_panels:
                if images is None:
                    images = rgb_images(batch["image"])
                gt = batch["label"][i].numpy().astype(np.uint8)
                panel = np.concatenate([images[i], self.colorize(gt), self.colorize(p)], axis=1)
                write_png(panel, confined_path(self.out_dir / "panels", f"{Path(path).stem}.png",
                                               source=f"sample id {sample_id!r}"))
                self.panels += 1
