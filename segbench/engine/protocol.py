"""The evaluation protocol: one typed record of how a prediction is made.

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
``isbi_errors``    the id of the membrane class: also compute the ISBI 2012 challenge's warping,
                   Rand and pixel errors (:mod:`segbench.metrics.isbi`) from that class's
                   probability (U-Net's Table 1); ``null`` / ``false`` = off. ``data=isbi``
                   sets it (``data.isbi_membrane_class``).

:mod:`segbench.engine.inference` carries a protocol out, keeping the training geometry the model
declares (``aligned_stride``: DeepLab's and PSPNet's inputs padded to ``k*OS+1``, multi-scale sizes
``(d-1)*s+1``, windows of ``k*OS+1``); :func:`describe` is its short text in tables and progress bars.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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
    isbi_errors: int | None = None  # membrane class id: also the ISBI 2012 errors
    window_batch: int = 8  # sliding windows per forward pass (times the images in the batch)
    extra: Mapping[str, Any] = field(default_factory=dict)  # documentation-only keys, kept in the record

    @classmethod
    def from_config(cls, cfg: Mapping | Protocol | None) -> Protocol:
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
        if values.get("isbi_errors") is False:  # off (False is also 0, a class id)
            del values["isbi_errors"]
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
        isbi = self.isbi_errors
        if isbi is not None and (isinstance(isbi, bool) or not isinstance(isbi, int) or isbi < 0):
            raise SegbenchError(f"eval protocol: isbi_errors is the membrane class id (an int >= 0) or null, "
                                f"got {isbi!r}")

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
    if p.get("isbi_errors") is not None and p.get("isbi_errors") is not False:
        text += " +ISBI"
    return text


def _plain(value):
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
