"""What the network sees: the uint8 RGB batch normalised on the device, in one place.

DataLoader workers hand over uint8 images (N x 3 x H x W) and uint8 train-id labels: 4 bytes
a pixel cross the worker queue, get pinned and copied, instead of the 20 of float32 images and
int64 labels. :class:`Normalization` turns such a batch into the network's input on whatever
device it already is (mmsegmentation's data preprocessor does the same): the training step,
evaluation, ``segbench predict``, ``segbench bench`` and the device check all call it, so a
measured step is the trained one. The uint8 batch itself stays what the panels and the dense
CRF show and see: the real RGB image, for every normalisation (LCN included).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from segbench.data.base import IMAGENET_MEAN, IMAGENET_STD
from segbench.errors import SegbenchError

KINDS = ("meanstd", "lcn")


@dataclass(frozen=True)
class Normalization:
    """``data.mean``/``data.std`` (on the 0..1 scale) or, with ``kind="lcn"``, SegNet-Basic's
    local contrast normalisation (``data.transforms.*.normalize``)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    kind: str = "meanstd"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SegbenchError(f"data.transforms.*.normalize must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @classmethod
    def from_data_config(cls, data) -> Normalization:
        """From ``cfg.data``: the train and val pipelines name one normalisation (a network is
        evaluated on the inputs it was trained on); a config that names two is refused."""
        transforms = data.get("transforms", {}) or {}
        kinds = {str((transforms.get(part) or {}).get("normalize", "meanstd")) for part in ("train", "val")}
        if len(kinds) > 1:
            raise SegbenchError(f"data.transforms.train.normalize and data.transforms.val.normalize differ "
                                f"({' vs '.join(sorted(kinds))}); the network must be evaluated on the inputs it "
                                f"was trained on: set both")
        return cls(tuple(float(m) for m in data.mean), tuple(float(s) for s in data.std), kinds.pop())

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """uint8 N x 3 x H x W (on any device) -> float32 network input on the same device."""
        if images.is_floating_point():
            raise TypeError("Normalization takes the uint8 image batch the datasets return, not float images")
        if self.kind == "lcn":
            x = local_contrast_norm(images.float() / 255.0)
        else:
            mean, scale = _meanstd_constants(self.mean, self.std, str(images.device))
            # (x - 255 mean) * (1 / (255 std)) in float32: exactly the arithmetic (and so the bits)
            # of albumentations' Normalize, which the workers ran before.
            x = (images.float() - mean) * scale
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def network_input(images: torch.Tensor, normalization: Normalization | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """What every reader of batches feeds the network: a uint8 batch through ``normalization``;
    a float batch (a test's or a script's ready input) as it is; in channels_last if asked."""
    if normalization is not None:
        return normalization(images, channels_last)
    if not images.is_floating_point():
        raise ValueError("a uint8 image batch needs its normalisation: pass "
                         "normalization=Normalization.from_data_config(cfg.data)")
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def rgb_images(images: torch.Tensor) -> np.ndarray:
    """A batch's uint8 N x 3 x H x W images as N x H x W x 3 RGB (panels, the CRF's colour term):
    the images as read, whatever the normalisation (LCN included)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"RGB images are the uint8 batch the datasets return, not {images.dtype} network inputs")
    return np.ascontiguousarray(images.detach().cpu().permute(0, 2, 3, 1).numpy())


@lru_cache(maxsize=16)
def _meanstd_constants(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean255 = np.array(mean, dtype=np.float32) * np.float32(255.0)
    scale = np.reciprocal(np.array(std, dtype=np.float32) * np.float32(255.0))
    return (torch.from_numpy(mean255).view(1, -1, 1, 1).to(device),
            torch.from_numpy(scale).view(1, -1, 1, 1).to(device))


def local_contrast_norm(x: torch.Tensor, kernel_size: int = 9, sigma: float = 2.0) -> torch.Tensor:
    """Local contrast normalisation of N x 3 x H x W images in 0..1 (SegNet §3.2, used for
    SegNet-Basic), in the form of Jarrett et al. (ICCV 2009, §2.1) that SegNet's earlier work
    cites: subtract a Gaussian-weighted local mean taken over the window *and* the channels,
    then divide by the Gaussian-weighted local standard deviation, floored at its image mean so
    that flat regions are not blown up. Output roughly zero mean / unit scale.

    The SegNet paper names LCN but not its window; 9x9 / sigma 2 is segbench's choice (OpenCV's
    Gaussian kernel, mirrored borders as ``BORDER_REFLECT_101``). The authors' released
    SegNet-Basic (``segnet_basic_train.prototxt``) does something else: raw 0..255 pixels
    through Caffe's cross-channel LRN (local_size 5, alpha 1e-4, beta 0.75).
    """
    mean = _gaussian_blur(x, kernel_size, sigma).mean(dim=1, keepdim=True)
    centred = x - mean
    local_sd = _gaussian_blur(centred * centred, kernel_size, sigma).mean(dim=1, keepdim=True).sqrt()
    floor = local_sd.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
    return centred / torch.maximum(local_sd, floor)


def _gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with mirrored borders (``cv2.GaussianBlur``'s
    ``BORDER_REFLECT_101`` is torch's ``reflect``)."""
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(x.device, x.dtype)
    channels, half = x.shape[1], kernel_size // 2
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size).contiguous(), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1).contiguous(), groups=channels)
