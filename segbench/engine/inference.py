"""Inference protocols: whole image or sliding window, multi-scale, horizontal flip, output
stride at test time, dense CRF.

One :class:`Protocol` (the config block ``eval_protocol`` of ``segbench train`` and
``protocol`` of ``segbench eval``) says how a prediction is made:

``mode``           ``whole`` (one forward per image) or ``slide`` (windows of ``crop_size``
                   every ``stride`` pixels, overlapping scores averaged; PSPNet's and mmseg's
                   Cityscapes protocol). ``stride`` defaults to ceil(2/3 crop) (PSPNet
                   ``scale_process.m``).
``slide_variant``  ``mmseg``: windows clipped to the image (a window that covers the image *is*
                   whole-image inference), logits averaged over windows (mmseg
                   ``slide_inference``). ``pspnet``: the authors' protocol (hszhao/semseg
                   ``tool/test.py`` ``scale_process`` / ``net_process``): the scaled image is
                   padded to the crop with the mean (0 after normalisation), each window's
                   scores go through softmax, the flip pair's probabilities are averaged, and
                   probabilities are averaged over windows; needs ``average: probs``.
``scales``         input scales; with ``base_size`` the long side is resized to
                   ``base_size * scale`` (PSPNet ``eval_all.m``), else both sides by ``scale``.
``flip``           also predict the mirrored image and mirror the scores back.
``average``        what is averaged over scales x flips: ``logits`` or ``probs`` (softmax).
                   The reference code of DeepLab v3/v3+ (TF ``predict_labels_multi_scale``)
                   and PSPNet (``caffe_process.m`` / semseg) average probabilities.
``output_stride``  call ``model.set_output_stride(os)`` for evaluation (DeepLab v3 §4.1:
                   train at 16, evaluate at 8) and restore the training value afterwards.
``postprocess``    a ``_target_`` config of a callable ``(image HxWx3 uint8, probs CxHxW) ->
                   probs``, e.g. ``conf/postprocess/crf.yaml`` (DeepLab v1/v2's dense CRF).
``boundary_f1``    also compute the boundary F1 score (SegNet), tolerance ``bf_tolerance``
                   (fraction of the image diagonal, 0.0075 in SegNet).

Scores are always brought back to the input (= label) resolution before the argmax: labels are
never downsampled (DeepLab v3 §4.1), so every protocol is scored at the original resolution.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from segbench.errors import SegbenchError


@dataclass(frozen=True)
class Protocol:
    mode: str = "whole"
    slide_variant: str = "mmseg"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    average: str = "logits"
    base_size: int | None = None
    output_stride: int | None = None
    postprocess: Mapping[str, Any] | None = None
    boundary_f1: bool = False
    bf_tolerance: float = 0.0075
    window_batch: int = 8  # sliding windows per forward pass (times the images in the batch)
    extra: Mapping[str, Any] = field(default_factory=dict)  # documentation-only keys, kept in the record

    @classmethod
    def from_config(cls, cfg: Mapping | "Protocol" | None) -> "Protocol":
        """Build from a config mapping; unknown keys are an error naming the known ones."""
        if isinstance(cfg, Protocol):
            return cfg
        cfg = dict(_plain(cfg) or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: cfg.pop(k) for k in list(cfg) if k in ("name", "note")}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise SegbenchError(f"eval protocol: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = {k: v for k, v in cfg.items() if v is not None}
        if "crop_size" in values:
            values["crop_size"] = _pair(values["crop_size"], "crop_size")
        if "stride" in values:
            values["stride"] = _pair(values["stride"], "stride")
        if "scales" in values:
            values["scales"] = tuple(float(s) for s in values["scales"])
        postprocess = values.get("postprocess")
        if postprocess is not None and not postprocess.get("_target_"):
            values["postprocess"] = None  # conf/postprocess/none.yaml
        protocol = cls(**values, extra=extra)
        protocol.validate()
        return protocol

    def validate(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise SegbenchError(f"eval protocol: mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.slide_variant not in ("mmseg", "pspnet"):
            raise SegbenchError(f"eval protocol: slide_variant must be 'mmseg' or 'pspnet', got {self.slide_variant!r}")
        if self.mode == "slide" and self.slide_variant == "pspnet" and self.average != "probs":
            raise SegbenchError("eval protocol: slide_variant=pspnet averages probabilities; set average=probs")
        if self.mode == "slide" and self.crop_size is None:
            raise SegbenchError("eval protocol: mode=slide needs crop_size=[h,w] (and optionally stride=[h,w])")
        if self.average not in ("logits", "probs"):
            raise SegbenchError(f"eval protocol: average must be 'logits' or 'probs', got {self.average!r}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise SegbenchError(f"eval protocol: scales must be positive, got {list(self.scales)}")

    @property
    def window_stride(self) -> tuple[int, int] | None:
        if self.crop_size is None:
            return None
        return self.stride or tuple(math.ceil(2 * c / 3) for c in self.crop_size)

    def to_dict(self) -> dict:
        """A plain, JSON-able record of the protocol (what run.json stores)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("crop_size", "stride", "scales"):
            if out[key] is not None:
                out[key] = list(out[key])
        if self.mode == "slide":
            out["stride"] = list(self.window_stride)
        out["postprocess"] = _plain(self.postprocess)
        out.update(self.extra)
        return out

    def describe(self) -> str:
        """Short human form, e.g. ``slide 713x713/476 MS(0.5..1.75)+flip OS8 +CRF``."""
        return describe(self.to_dict())


def describe(protocol: Mapping | None) -> str:
    """Short text for a protocol record (also old records that only hold scales/flip)."""
    p = dict(protocol or {})
    scales = list(p.get("scales") or [1.0])
    text = "SS" if scales == [1.0] else "MS(" + ",".join(f"{s:g}" for s in scales) + ")"
    if p.get("flip"):
        text += "+flip"
    if p.get("mode") == "slide" and p.get("crop_size"):
        crop = p["crop_size"]
        variant = " pspnet-pad" if p.get("slide_variant") == "pspnet" else ""
        text = f"slide {crop[0]}x{crop[1]}{variant} " + text
    if p.get("base_size"):
        text += f" base{p['base_size']}"
    if p.get("output_stride"):
        text += f" OS{p['output_stride']}"
    post = p.get("postprocess")
    if isinstance(post, Mapping) and post.get("_target_"):
        text += " +CRF" if "crf" in str(post["_target_"]).lower() else f" +{str(post['_target_']).rsplit('.', 1)[-1]}"
    if p.get("boundary_f1"):
        text += " +BF"
    return text


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = list(value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    if len(value) != 2:
        raise SegbenchError(f"eval protocol: {name} must be an int or [h, w], got {value}")
    return (int(value[0]), int(value[1]))


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


def scaled_size(height: int, width: int, scale: float, base_size: int | None) -> tuple[int, int]:
    if base_size:
        long = int(round(base_size * scale))
        if height >= width:
            return long, max(1, int(round(width * long / height)))
        return max(1, int(round(height * long / width))), long
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def predict(model, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
            protocol: Protocol | Mapping | None = None) -> torch.Tensor:
    """Scores N x C x H x W at the input size, averaged over ``scales`` x flips.

    Scores are logits, or probabilities when ``protocol.average == "probs"``. Called with only
    ``scales``/``flip`` it keeps its original meaning (whole image, logits averaged).
    """
    if protocol is None:
        protocol = Protocol(scales=tuple(scales), flip=flip)
    protocol = Protocol.from_config(protocol)
    height, width = images.shape[-2:]
    total, views = None, 0
    for scale in protocol.scales:
        size = scaled_size(height, width, scale, protocol.base_size)
        scaled = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False)
        already_probs = protocol.mode == "slide" and protocol.slide_variant == "pspnet"
        if already_probs:  # the flip pair is fused inside, as semseg's net_process does
            logits = pspnet_slide_probs(model, scaled, protocol.crop_size, protocol.window_stride, protocol.flip,
                                        protocol.window_batch)[None]
        elif protocol.mode == "slide":
            logits = slide_logits(model, scaled, protocol.crop_size, protocol.window_stride, protocol.flip,
                                  protocol.window_batch)
        else:
            logits = _forward(model, scaled, protocol.flip)
        for view in logits:
            if view.shape[-2:] != (height, width):
                view = F.interpolate(view, size=(height, width), mode="bilinear", align_corners=False)
            if protocol.average == "probs" and not already_probs:
                view = view.softmax(1)
            total = view if total is None else total + view
            views += 1
    return total / views


def to_probs(scores: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    return scores if protocol.average == "probs" else scores.softmax(1)


# ---- output stride ----------------------------------------------------------------------------
def current_output_stride(model) -> int | None:
    for owner in (model, getattr(model, "backbone", None)):
        value = getattr(owner, "output_stride", None)
        if isinstance(value, int):
            return value
    return None


class eval_output_stride:
    """Context manager: evaluate at ``output_stride`` (None = as trained), then restore."""

    def __init__(self, model, output_stride: int | None):
        self.model, self.target, self.previous = model, output_stride, None

    def __enter__(self):
        if self.target is None:
            return self.model
        if not hasattr(self.model, "set_output_stride"):
            raise SegbenchError(
                f"eval protocol: output_stride={self.target} but {type(self.model).__name__} has a fixed output "
                "stride (no set_output_stride); remove eval_protocol.output_stride")
        self.previous = current_output_stride(self.model)
        if self.previous != self.target:
            self.model.set_output_stride(self.target)
        return self.model

    def __exit__(self, *exc):
        if self.previous is not None and self.previous != self.target:
            self.model.set_output_stride(self.previous)
        return False


# ---- post-processing --------------------------------------------------------------------------
def build_postprocess(protocol: Protocol):
    """The callable of ``protocol.postprocess`` (e.g. DenseCRF), or None."""
    if not protocol.postprocess:
        return None
    from segbench.trust import instantiate_unwrapped

    return instantiate_unwrapped(dict(protocol.postprocess))


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> "np.ndarray":
    """N x 3 x H x W normalised floats -> N x H x W x 3 uint8 RGB (for the CRF's colour term)."""
    import numpy as np

    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    rgb = (images.detach().float().cpu() * s + m).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy())


def apply_postprocess(postprocess, images_uint8, probs: torch.Tensor) -> torch.Tensor:
    """Run ``postprocess(image, probs)`` per image; returns refined probabilities."""
    out = []
    for image, p in zip(images_uint8, probs):
        refined = postprocess(image, p.detach().float().cpu().numpy())
        out.append(torch.as_tensor(refined))
    return torch.stack(out).to(probs.device)
