"""Inference: carrying out a :class:`~segbench.engine.protocol.Protocol` -- whole image or
sliding window (mmseg's or PSPNet's), multi-scale, horizontal flip, output stride at test time,
dense CRF post-processing.

Scores are always brought back to the input (= label) resolution before the argmax: labels are
never downsampled (DeepLab v3 §4.1), so every protocol is scored at the original resolution.

Every protocol keeps the training geometry the model declares (``aligned_stride``,
:mod:`segbench.models.base`). A network that resizes with corners aligned from a stride-OS grid
(DeepLab, PSPNet) was trained on ``k*OS+1`` crops, on which feature j lies on pixel ``OS*j``; on
any other size the final resize stretches the grid (up to OS-1 px at the bottom/right). So each
forward pass gets an input of ``k*OS+1`` pixels: the image is padded at the bottom/right with 0
(the mean pixel after normalisation) and the scores are cropped back, as TF DeepLab pads to its
``eval_crop_size`` and Caffe DeepLab to 513; multi-scale inputs are resized with corners aligned
to ``(d-1)*s+1`` pixels (TF DeepLab ``scale_dimension``) and sliding windows must be ``k*OS+1``
pixels. Models without a constraint (FCN, SegNet, U-Net) see exactly the image, as before.

:class:`BatchInference` is the per-batch path every evaluation (:mod:`segbench.engine.evaluator`)
and ``segbench predict`` share: a uint8 batch normalised on the device, in the memory format and
autocast precision of its :class:`InferenceSettings`, predicted under the protocol, post-processed,
arg-maxed.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from segbench.data.normalization import Normalization, network_input
from segbench.engine.device import autocast
from segbench.engine.protocol import Protocol
from segbench.errors import SegbenchError
from segbench.trust import instantiate_unwrapped


# ---- training geometry ------------------------------------------------------------------------
def aligned_stride(model) -> int | None:
    """The model's ``aligned_stride`` (:class:`segbench.models.base.SegmentationModel`); a module
    that declares none takes any input size."""
    return getattr(model, "aligned_stride", None)


def aligned_size(size: int, stride: int | None) -> int:
    """The smallest ``k * stride + 1 >= size``; ``size`` itself when there is no stride."""
    return stride * math.ceil((size - 1) / stride) + 1 if stride else size


def run_aligned(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                stride: int | None) -> torch.Tensor:
    """``run(images)`` on the images padded at the bottom/right to ``k * stride + 1`` pixels with 0
    (the mean pixel in normalised space), the scores (``... x H x W``) cropped back to the image."""
    height, width = images.shape[-2:]
    pad_h, pad_w = aligned_size(height, stride) - height, aligned_size(width, stride) - width
    if not (pad_h or pad_w):
        return run(images)
    return run(F.pad(images, (0, pad_w, 0, pad_h), value=0.0))[..., :height, :width]


def check_window(crop: Sequence[int], stride: int | None, model) -> None:
    """Sliding windows must be training-sized too: refuse a crop that is not ``k * stride + 1``."""
    if stride and any((c - 1) % stride for c in crop):
        fits = [aligned_size(c, stride) for c in crop]
        raise SegbenchError(f"eval protocol: crop_size {crop[0]}x{crop[1]} puts {type(model).__name__}'s features "
                            f"off the pixels they were trained on (windows must be k*{stride}+1 pixels at output "
                            f"stride {stride}); use crop_size=[{fits[0]},{fits[1]}]")


def check_protocol(model, protocol: Protocol | Mapping | None) -> None:
    """:func:`check_window` at the stride the protocol evaluates at, before any work (a trainer
    would otherwise find out at its first validation)."""
    protocol = Protocol.from_config(protocol)
    if protocol.mode == "slide":
        with eval_output_stride(model, protocol.output_stride):
            check_window(protocol.crop_size, aligned_stride(model), model)


# ---- forward passes ---------------------------------------------------------------------------
def forward_logits(model, images: torch.Tensor) -> torch.Tensor:
    return model(images)["out"]


def _forward(model, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """Logits of ``images`` (and, with ``flip``, of their mirror images, mirrored back):
    returns a list-like 1 or 2 x N x C x H x W tensor. Both views go through one batch."""
    if not flip:
        return forward_logits(model, images).float()[None]
    n = images.shape[0]
    logits = forward_logits(model, torch.cat([images, images.flip(-1)])).float()
    return torch.stack([logits[:n], logits[n:].flip(-1)])


def slide_windows(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window, mmseg ``slide_inference`` style: a regular grid with
    the last row/column shifted back inside the image; windows larger than the image are
    clipped to it (one window = whole image)."""
    ch, cw = min(crop[0], height), min(crop[1], width)
    sh, sw = stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            boxes.append((y2 - ch, y2, x2 - cw, x2))
    return sorted(set(boxes))


def slide_logits(model, images: torch.Tensor, crop: Sequence[int], stride: Sequence[int], flip: bool = False,
                 window_batch: int = 8, per_window: Callable | None = None) -> torch.Tensor:
    """Overlapping-window inference: per-window logits summed into place and divided by the
    number of windows covering each pixel. Returns V x N x C x H x W (V = 2 with flip).
    ``per_window`` maps each group of window outputs (V x windows x C x h x w) before the sum."""
    n, _, height, width = images.shape
    boxes = slide_windows(height, width, crop, stride)
    total = count = None
    chunk = max(1, window_batch)
    for start in range(0, len(boxes), chunk):
        group = boxes[start:start + chunk]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])  # all windows share a size
        logits = _forward(model, crops, flip)  # V x (len(group)*N) x C x h x w
        if per_window is not None:
            logits = per_window(logits)
        if total is None:
            v, _, c = logits.shape[:3]
            total = logits.new_zeros(v, n, c, height, width)
            count = logits.new_zeros(1, 1, 1, height, width)
        for k, (y1, y2, x1, x2) in enumerate(group):
            total[:, :, :, y1:y2, x1:x2] += logits[:, k * n:(k + 1) * n]
            count[..., y1:y2, x1:x2] += 1
    return total / count


def pspnet_slide_probs(model, images: torch.Tensor, crop: Sequence[int], stride: Sequence[int],
                       flip: bool = False, window_batch: int = 8) -> torch.Tensor:
    """PSPNet's sliding window (hszhao/semseg ``tool/test.py``): probabilities N x C x H x W.

    ``scale_process``: an image smaller than the crop is padded to it, centred, with the mean
    (semseg pads the raw image with the mean and then normalises, so the padding is exactly 0
    here); windows of the crop every ``stride`` cover the padded image (the last row/column
    shifted back inside); ``net_process`` turns each window's logits into probabilities,
    averaging the flip pair *after* the softmax; the probabilities are averaged where windows
    overlap and the padding is cropped away. (The Caffe original, ``scale_process.m`` /
    ``caffe_process.m``, pads at the bottom/right and takes the softmax of the *summed* flip
    logits; the PyTorch reference is followed here.)
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(images, (left, pad_w - left, top, pad_h - top), value=0.0)
    # Every window of the padded image is a full crop (nothing clipped); each turns into
    # probabilities, its flip pair averaged, before the windows are averaged.
    probs = slide_logits(model, padded, crop, stride, flip, window_batch,
                         per_window=lambda logits: logits.softmax(2).mean(0, keepdim=True))[0]
    return probs[..., top:top + height, left:left + width]


def scaled_size(height: int, width: int, scale: float, base_size: int | None,
                corners: bool = False) -> tuple[int, int]:
    """The input size at ``scale``: the long side ``base_size * scale`` (PSPNet ``eval_all.m``),
    ``(d - 1) * scale + 1`` for a corner-aligned resize (TF DeepLab ``utils.scale_dimension``, which
    maps pixel ``y`` onto ``y * scale`` exactly), else ``d * scale`` rounded."""
    if base_size:
        long = int(round(base_size * scale))
        if height >= width:
            return long, max(1, int(round(width * long / height)))
        return max(1, int(round(height * long / width))), long
    if corners:
        return max(1, int((height - 1) * scale + 1)), max(1, int((width - 1) * scale + 1))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def predict(model, images: torch.Tensor, protocol: Protocol | Mapping | None = None) -> torch.Tensor:
    """Scores N x C x H x W at the input size, averaged over the protocol's scales x flips.

    Scores are logits, or probabilities when ``protocol.average == "probs"``; no protocol =
    ``Protocol()`` (whole image, one scale, no flip). Every forward pass keeps the model's
    training geometry (module docstring)."""
    protocol = Protocol.from_config(protocol)
    stride = aligned_stride(model)
    if protocol.mode == "slide":
        check_window(protocol.crop_size, stride, model)
    # PSPNet's base_size protocol resizes as semseg does (cv2, pixel centres); others follow the model
    corners = stride is not None and not protocol.base_size
    height, width = images.shape[-2:]
    total, views = None, 0
    for scale in protocol.scales:
        size = scaled_size(height, width, scale, protocol.base_size, corners)
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=corners)
        logits = _protocol_views(model, scaled, protocol, stride)
        for view in logits:
            if view.shape[-2:] != (height, width):
                view = F.interpolate(view, size=(height, width), mode="bilinear", align_corners=corners)
            if protocol.average == "probs" and not _fuses_probs(protocol):
                view = view.softmax(1)
            total = view if total is None else total + view
            views += 1
    return total / views


def _fuses_probs(protocol: Protocol) -> bool:
    """PSPNet's windows come back as probabilities, the flip pair fused (semseg ``net_process``)."""
    return protocol.mode == "slide" and protocol.slide_variant == "pspnet"


def _protocol_views(model, images: torch.Tensor, protocol: Protocol, stride: int | None) -> torch.Tensor:
    """V x N x C x H x W scores of one scale: whole image or windows, each view (V = 2 with flip)."""
    if _fuses_probs(protocol):  # pads to the (aligned) crop itself, centred, as semseg does
        return pspnet_slide_probs(model, images, protocol.crop_size, protocol.window_stride, protocol.flip,
                                  protocol.window_batch)[None]
    if protocol.mode == "slide":  # windows clipped to the padded image are k*OS+1 too
        return run_aligned(lambda x: slide_logits(model, x, protocol.crop_size, protocol.window_stride,
                                                  protocol.flip, protocol.window_batch), images, stride)
    # padded before the flip, as TF DeepLab flips its padded input: both views share one grid
    return run_aligned(lambda x: _forward(model, x, protocol.flip), images, stride)


def to_probs(scores: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    return scores if protocol.average == "probs" else scores.softmax(1)


# ---- output stride ----------------------------------------------------------------------------
@contextlib.contextmanager
def eval_output_stride(model, output_stride: int | None):
    """Evaluate at ``output_stride`` (None = as trained), then restore the training value.

    Through the model's own ``set_output_stride`` (:mod:`segbench.models.base`): a model that
    cannot change its stride says so."""
    if output_stride is None:
        yield model
        return
    previous = model.output_stride
    model.set_output_stride(output_stride)
    try:
        yield model
    finally:
        model.set_output_stride(previous)


# ---- post-processing --------------------------------------------------------------------------
def build_postprocess(protocol: Protocol):
    """The callable of ``protocol.postprocess`` (e.g. DenseCRF), or None."""
    if not protocol.postprocess:
        return None
    return instantiate_unwrapped(dict(protocol.postprocess))


def apply_postprocess(postprocess, images_uint8, probs: torch.Tensor) -> torch.Tensor:
    """Run ``postprocess(image, probs)`` per image; returns refined probabilities."""
    out = []
    for image, p in zip(images_uint8, probs):
        refined = postprocess(image, p.detach().float().cpu().numpy())
        out.append(torch.as_tensor(refined))
    return torch.stack(out).to(probs.device)


# ---- one batch: the path every evaluation and `segbench predict` share --------------------------
@dataclass(frozen=True)
class InferenceSettings:
    """How a model is run for inference: autocast ``precision`` and memory format (both resolved,
    :func:`segbench.engine.device.resolve_speed`), the ``normalization`` that turns a uint8 batch
    into the network's input (None: batches hold ready float inputs) and the parsed ``protocol``."""

    precision: str = "fp32"
    channels_last: bool = False
    normalization: Normalization | None = None
    protocol: Protocol = field(default_factory=Protocol)


class BatchInference:
    """A model run on batches as every evaluation and ``segbench predict`` run it:
    :meth:`scores`, then :meth:`labels`. The post-processing is built once, from the protocol.
    The caller puts the model in eval mode (and on the device, in the memory format)."""

    def __init__(self, model, device: torch.device, settings: InferenceSettings):
        self.model, self.device, self.settings = model, device, settings
        self.postprocess = build_postprocess(settings.protocol)

    @torch.inference_mode()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """float32 N x C x H x W scores of a uint8 (or ready float) N x 3 x H x W batch at its own
        size: normalised on the device, in the settings' memory format and precision, under the
        protocol at its output stride (which pads the input where the network needs it)."""
        settings = self.settings
        x = network_input(images.to(self.device, non_blocking=True), settings.normalization)
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with eval_output_stride(self.model, settings.protocol.output_stride), autocast(self.device, settings.precision):
            scores = predict(self.model, x, protocol=settings.protocol)
        return scores.float()

    @torch.inference_mode()
    def labels(self, scores: torch.Tensor, rgb: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N x H x W train ids, the post-processed probabilities or None): the protocol's
        post-processing, which sees ``rgb`` (the N x H x W x 3 uint8 images at the scores' size),
        then the argmax."""
        if self.postprocess is None:
            return scores.argmax(1), None
        probs = apply_postprocess(self.postprocess, rgb, to_probs(scores, self.settings.protocol))
        return probs.argmax(1), probs
