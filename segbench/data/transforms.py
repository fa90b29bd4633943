"""Albumentations pipelines built from config (``data.transforms.train`` / ``.val``).

Pipelines take and return uint8 (image) and train ids (label); the worker hands those over
and the device normalises them (:mod:`segbench.data.normalization`).

The papers' augmentations are few and alike — random scale, crop with padding, flip, sometimes
rotation and blur (PSPNet §5.1) — so one parametrised builder covers every recipe and the
YAML states each range. Labels are always resampled with nearest neighbour and padded with
255 (ignore), so a transform can never invent a class id. The one exception is
``border="reflect"`` (U-Net's mirroring, for ISBI): there image and label are mirrored
together, so the border holds real, correctly labelled content instead of ignore.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric.distortion import BaseDistortion

from segbench.data.base import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from segbench.data.normalization import Normalization


def _pad_fill(mean: Sequence[float], pad_value: str | float) -> tuple | float:
    # "mean" pads with the dataset mean (DeepLab's choice): on the uint8 image it rounds to the
    # nearest grey level, which normalisation maps to within 0.01 of 0.
    if pad_value == "mean":
        return tuple(255.0 * m for m in mean)
    return float(pad_value)


class WorkerSeededCompose(A.Compose):
    """``A.Compose`` that re-seeds itself once in every DataLoader worker.

    Albumentations 2.x keeps its own generator, created when the pipeline is built; forked
    workers inherit the same state, so without this every worker — and every epoch, as
    workers are re-forked — replays the same augmentation sequence. torch gives each worker a
    distinct seed per epoch (derived from ``torch.manual_seed``), which we adopt.

    A seed starts *one* random stream that the steps draw from in turn. ``A.Compose`` seeds
    every step with the same seed instead, so each step's first draw was the same number: with
    segbench's per-sample seeds the scale factor, the crop's vertical offset and the flip were
    one uniform draw (a flipped crop was always a zoomed-out one).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seeded_in = os.getpid()

    def set_random_seed(self, seed: int | None) -> None:
        super().set_random_seed(seed)
        for transform in self.transforms:  # one shared stream: independent draws, in order
            transform.set_random_state(self.random_generator, self.py_random)

    def __call__(self, *args, **kwargs):
        if self._seeded_in != os.getpid():
            self._seeded_in = os.getpid()
            info = torch.utils.data.get_worker_info()
            if info is not None and self.seed is None:
                self.set_random_seed(info.seed % 2**32)
        return super().__call__(*args, **kwargs)


class UNetElastic(BaseDistortion):
    """U-Net's elastic deformation (Ronneberger et al. 2015, §3.1): "random displacement
    vectors on a coarse 3 by 3 grid ... sampled from a Gaussian distribution with 10 pixels
    standard deviation. Per-pixel displacements are then computed using bicubic interpolation."

    Unlike albumentations' ``ElasticTransform`` (Simard et al.: per-pixel noise smoothed by a
    Gaussian), this is the paper's coarse-grid field. Labels are resampled with nearest
    neighbour, so no new values appear.
    """

    class InitSchema(BaseDistortion.InitSchema):
        grid: int
        sigma: float

    def __init__(self, grid: int = 3, sigma: float = 10.0, interpolation: int = cv2.INTER_LINEAR,
                 mask_interpolation: int = cv2.INTER_NEAREST, keypoint_remapping_method: str = "mask",
                 border_mode: int = cv2.BORDER_REFLECT_101, fill: Any = 0, fill_mask: Any = IGNORE_INDEX,
                 p: float = 1.0):
        super().__init__(interpolation=interpolation, mask_interpolation=mask_interpolation,
                         keypoint_remapping_method=keypoint_remapping_method, p=p,
                         border_mode=border_mode, fill=fill, fill_mask=fill_mask)
        self.grid = grid
        self.sigma = sigma

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        coarse = self.random_generator.normal(0.0, self.sigma, size=(2, self.grid, self.grid)).astype(np.float32)
        dx = cv2.resize(coarse[0], (width, height), interpolation=cv2.INTER_CUBIC)
        dy = cv2.resize(coarse[1], (width, height), interpolation=cv2.INTER_CUBIC)
        xx, yy = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        return {"map_x": xx + dx, "map_y": yy + dy}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "sigma", "interpolation", "border_mode", "fill", "fill_mask")


class ScaleCrop(A.DualTransform):
    """``RandomScale`` -> ``PadIfNeeded`` (centred) -> ``RandomCrop`` in one step that resamples
    only the crop.

    The scale factor, the scaled size ``int(H s) x int(W s)``, the centred padding and the crop
    offset are drawn exactly as those three albumentations steps draw them; then the crop's
    window is mapped back into the source image and only that window is resampled. Resizing a
    2048x1024 Cityscapes frame by up to 2 (to 4096x2048) to keep one 713x713 crop made the
    pipeline slower than decoding the PNGs; this resamples 713x713 pixels whatever the scale.
    Labels (and extra masks such as depth) take exactly the pixels ``cv2.resize``'s nearest
    neighbour would give them; the image takes the same bilinear weights as ``cv2.resize``
    (OpenCV quantises them a little differently in a warp: within a grey level or two).
    """

    class InitSchema(A.DualTransform.InitSchema):
        scale_range: tuple[float, float]
        height: int
        width: int
        fill: Any
        fill_mask: Any

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0), height: int = 512, width: int = 512,
                 fill: Any = 0, fill_mask: Any = IGNORE_INDEX, p: float = 1.0):
        super().__init__(p=p)
        self.scale_range = tuple(scale_range)
        self.height, self.width = height, width
        self.fill, self.fill_mask = fill, fill_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = self.py_random.uniform(self.scale_range[0] - 1.0, self.scale_range[1] - 1.0) + 1.0  # as RandomScale
        scaled = int(height * scale), int(width * scale)  # albumentations' geometric.scale
        origin = []
        for size, crop in zip(scaled, (self.height, self.width)):
            padded = max(size, crop)
            before = (padded - size) // 2  # PadIfNeeded's centred padding
            # RandomCrop: offset int((padded - crop + 1) * u), in the padded scaled image
            origin.append(int((padded - crop + 1) * self.py_random.random()) - before)
        return {"source": (height, width), "scaled": scaled, "origin": tuple(origin)}

    def _outside(self, out: np.ndarray, scaled, origin, fill) -> np.ndarray:
        """Set the padding (crop pixels beyond the scaled image) to ``fill``."""
        rows = np.arange(origin[0], origin[0] + self.height)
        cols = np.arange(origin[1], origin[1] + self.width)
        out[(rows < 0) | (rows >= scaled[0])] = fill
        out[:, (cols < 0) | (cols >= scaled[1])] = fill
        return out

    def apply(self, img: np.ndarray, source=(1, 1), scaled=(1, 1), origin=(0, 0), **params) -> np.ndarray:
        # cv2.resize's INTER_LINEAR maps output pixel d to source (d + 0.5) * src / dst - 0.5,
        # clamped at the border (= BORDER_REPLICATE); d here runs over the crop window only.
        sy, sx = source[0] / scaled[0], source[1] / scaled[1]
        matrix = np.array([[sx, 0.0, (origin[1] + 0.5) * sx - 0.5], [0.0, sy, (origin[0] + 0.5) * sy - 0.5]])
        out = cv2.warpAffine(img, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        if out.ndim < img.ndim:  # OpenCV drops a single channel axis
            out = out[..., None]
        return self._outside(out, scaled, origin, self.fill)

    def apply_to_mask(self, mask: np.ndarray, source=(1, 1), scaled=(1, 1), origin=(0, 0), **params) -> np.ndarray:
        rows = _nearest_source(np.arange(origin[0], origin[0] + self.height), source[0], scaled[0])
        cols = _nearest_source(np.arange(origin[1], origin[1] + self.width), source[1], scaled[1])
        return self._outside(mask[rows[:, None], cols[None, :]], scaled, origin, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range", "height", "width", "fill", "fill_mask")


def _nearest_source(positions: np.ndarray, source: int, scaled: int) -> np.ndarray:
    """cv2.resize's INTER_NEAREST source index of each destination position (``floor(d / fx)``
    with its double ``fx = dst / src``, so labels match a full resize pixel for pixel); positions
    beyond the scaled image are clipped (they are padding)."""
    inverse = 1.0 / (scaled / source)
    return np.minimum(np.floor(np.clip(positions, 0, scaled - 1) * inverse).astype(np.int64), source - 1)


class IgnoreMargin(A.DualTransform):
    """Label a ``margin`` px ring of the crop 255: the context of a U-Net overlap tile, which the
    valid-convolution net sees but does not predict (see ``train_pipeline(context=...)``)."""

    class InitSchema(A.DualTransform.InitSchema):
        margin: int

    def __init__(self, margin: int, p: float = 1.0):
        super().__init__(p=p)
        self.margin = margin

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return img

    def apply_to_mask(self, mask: np.ndarray, **params) -> np.ndarray:
        m, out = self.margin, mask.copy()
        out[:m], out[-m:], out[:, :m], out[:, -m:] = IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("margin",)


def _check_normalize(normalize: str) -> None:
    # The normalisation itself runs on the device (Normalization reads this key from the
    # config); checked here so that a typo fails when the pipeline is built.
    Normalization(kind=normalize)


def _scale_pad_crop(scale_range, crop_h: int, crop_w: int, rotate: float, rotate_p: float, elastic,
                    mode: int, fill, context: int) -> list:
    """Scale the whole image, (rotate, deform), pad, then crop: where the crop window cannot be
    picked in source coordinates first (a rotation or deformation moves it), or a mirrored
    border or U-Net's context tile are wanted."""
    steps: list = []
    if scale_range is not None:
        lo, hi = scale_range
        steps.append(A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    if rotate:
        steps.append(A.Rotate(limit=rotate, border_mode=mode, fill=fill,
                              fill_mask=IGNORE_INDEX, p=rotate_p))
    if elastic:
        kwargs = dict(elastic) if isinstance(elastic, Mapping) else {}  # DictConfig is a Mapping
        steps.append(UNetElastic(border_mode=mode, fill=fill, **kwargs))
    steps += [
        A.PadIfNeeded(min_height=crop_h, min_width=crop_w, border_mode=mode,
                      fill=fill, fill_mask=IGNORE_INDEX),
    ]
    if context:
        steps += [A.Pad(padding=context, border_mode=cv2.BORDER_REFLECT_101, fill=fill, fill_mask=IGNORE_INDEX),
                  A.RandomCrop(height=crop_h + 2 * context, width=crop_w + 2 * context),
                  IgnoreMargin(context)]
    else:
        steps.append(A.RandomCrop(height=crop_h, width=crop_w))
    return steps


def train_pipeline(
    crop_size: Sequence[int] | int,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: bool = True,
    rotate: float = 0.0,
    blur_p: float = 0.0,
    rotate_p: float = 1.0,
    color_jitter: bool = False,
    pad_value: str | float = "mean",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    elastic: dict | bool | None = None,
    border: str = "constant",
    vflip: bool = False,
    normalize: str = "meanstd",
    context: int = 0,
) -> A.Compose:
    """Random scale → (rotate) → (elastic) → pad → random crop → flip → (blur, jitter), uint8 in
    and out: normalisation (``mean``/``std``/``normalize``) runs on the device
    (:class:`~segbench.data.normalization.Normalization`), where the worker's 1-byte pixels
    become the network's floats.

    ``elastic``: U-Net's coarse-grid deformation (:class:`UNetElastic`); ``true`` for the
    paper's 3x3 grid / 10 px, or a dict of its arguments (``grid``, ``sigma``, ``p``).
    ``border``: ``constant`` (pad image with ``pad_value``, label with 255) or ``reflect``
    (mirror image *and* label, as U-Net extrapolates missing context, §2).
    ``vflip``: also flip vertically (EM slices have no up/down).
    ``rotate`` (degrees, uniform in +-rotate) with probability ``rotate_p``; ``blur_p``: a 5x5 Gaussian
    blur with OpenCV's sigma for that kernel (hszhao/semseg ``RandRotate`` p, ``RandomGaussianBlur``).
    ``normalize``: ``meanstd`` (``mean``/``std``) or ``lcn``
    (:func:`~segbench.data.normalization.local_contrast_norm`), applied on the device.
    ``context``: U-Net's overlap tiles (§2, Fig. 2; 92 for the 572 -> 388 tile): ``crop_size``
    is the *output* tile; the input tile is cut ``context`` px larger on every side from the
    image, so it carries the real neighbourhood, mirrored only beyond the image border; the
    label's ``context`` ring is 255 (seen, not predicted; ``model.tile_context=true``).
    """
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    fill = _pad_fill(mean, pad_value)
    if border not in ("constant", "reflect"):
        raise ValueError(f"border must be 'constant' or 'reflect', not {border!r}")
    mode = cv2.BORDER_REFLECT_101 if border == "reflect" else cv2.BORDER_CONSTANT
    scaling = scale_range is not None and tuple(scale_range) != (1.0, 1.0)
    if scaling and not (rotate or elastic or context) and border == "constant":
        # the same scale, padding and crop draws, resampling only the crop (see ScaleCrop)
        steps: list = [ScaleCrop(scale_range, crop_h, crop_w, fill=fill, fill_mask=IGNORE_INDEX)]
    else:
        steps = _scale_pad_crop(scale_range if scaling else None, crop_h, crop_w, rotate, rotate_p, elastic,
                                mode, fill, context)
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if vflip:
        steps.append(A.VerticalFlip(p=0.5))
    if blur_p:
        # semseg: cv2.GaussianBlur(image, (5, 5), 0), whose sigma for a 5x5 kernel is 0.3 * (2 - 1) + 0.8
        steps.append(A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(1.1, 1.1), p=blur_p))
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5))
    _check_normalize(normalize)
    return WorkerSeededCompose(steps)


def eval_pipeline(
    resize: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: str = "meanstd",
) -> A.Compose:
    """Whole image, uint8 (normalised on the device, as in training). ``resize`` (H, W) only for
    datasets whose papers evaluate resized."""
    steps: list = []
    if resize is not None:
        steps.append(A.Resize(height=resize[0], width=resize[1], interpolation=cv2.INTER_LINEAR))
    _check_normalize(normalize)
    return A.Compose(steps)
