"""Fully connected CRF post-processing (Krähenbühl & Koltun, NIPS 2011), as DeepLab v1 §4
and v2 §3.3 apply it to the network's softmax output.

The energy of a labelling x is

    E(x) = sum_i  -log P(x_i)                                   (unary: the network)
         + sum_{i<j} [x_i != x_j] * ( w_pos * exp(-|p_i - p_j|^2 / 2 pos_xy^2)
                                     + w_bi  * exp(-|p_i - p_j|^2 / 2 bi_xy^2
                                                   - |I_i - I_j|^2 / 2 bi_rgb^2) )

(a Potts model with a smoothness kernel on position and an appearance kernel on position
and colour), and mean-field inference updates Q for ``iterations`` rounds:

    Q_i(l) ∝ exp( -U_i(l) + sum_m w_m * sum_j k_m(f_i, f_j) Q_j(l) )

Two backends compute it:

* ``"pydensecrf"`` -- Krähenbühl's C++ code (``pip install pydensecrf2``), which filters
  with the permutohedral lattice (linear in the number of pixels, approximate) and
  normalises each kernel symmetrically (``NORMALIZE_SYMMETRIC``, its default): the
  message is ``D^-1/2 K D^-1/2 Q`` with ``D = diag(K 1)``;
* ``"torch"`` -- the same update with the dense N x N Gaussian kernel computed exactly,
  in row chunks to bound memory. Quadratic in the pixel count: meant for small images,
  for tests, and as an executable statement of the maths.

``"auto"`` picks pydensecrf when importable, else torch for images up to
``max_exact_pixels``, else raises with the install command.
"""
from __future__ import annotations

import numpy as np
import torch

from segbench.errors import SegbenchError

#: Smallest probability fed to -log, as ``pydensecrf.utils.unary_from_softmax`` clips.
PROB_CLIP = 1e-5


def has_pydensecrf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


class DenseCRF:
    """``DenseCRF(...)(image, probs) -> probs``: refine C x H x W class probabilities.

    Defaults are one source, the public DeepLab v2 ResNet-101 reproduction
    (kazuto1011/deeplab-pytorch ``configs/voc12.yaml``): 10 mean-field iterations; smoothness
    kernel w = 3, sigma = 1 px; appearance kernel w = 4, sigma_xy = 67 px, sigma_rgb = 3. The
    papers fix the smoothness kernel at w = 3, sigma = 3 (v1 §4.2, v2 §4.1.1) and cross-validate
    the appearance kernel per model; the DeepLab v1 recipe sets those values explicitly.
    """

    def __init__(
        self,
        iterations: int = 10,
        pos_w: float = 3.0,
        pos_xy_std: float = 1.0,
        bi_w: float = 4.0,
        bi_xy_std: float = 67.0,
        bi_rgb_std: float = 3.0,
        backend: str = "auto",
        max_exact_pixels: int = 128 * 128,
    ):
        if backend not in ("auto", "pydensecrf", "torch"):
            raise SegbenchError(f"crf: backend must be auto, pydensecrf or torch, got {backend!r}")
        if backend == "pydensecrf" and not has_pydensecrf():
            raise SegbenchError(
                "crf: backend=pydensecrf needs the pydensecrf2 package: pip install pydensecrf2"
            )
        self.iterations = iterations
        self.pos_w, self.pos_xy_std = pos_w, pos_xy_std
        self.bi_w, self.bi_xy_std, self.bi_rgb_std = bi_w, bi_xy_std, bi_rgb_std
        self.backend = backend
        self.max_exact_pixels = max_exact_pixels

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``image``: H x W x 3 uint8 RGB; ``probs``: C x H x W softmax output. Returns C x H x W."""
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != probs.shape[1:]:
            raise SegbenchError(
                f"crf: need an H x W x 3 image and C x H x W probabilities of the same size, "
                f"got {image.shape} and {probs.shape}"
            )
        backend = self._pick_backend(image.shape[0] * image.shape[1])
        run = self._pydensecrf if backend == "pydensecrf" else self._torch
        return run(np.ascontiguousarray(image, dtype=np.uint8), probs.astype(np.float32))

    def _pick_backend(self, num_pixels: int) -> str:
        if self.backend != "auto":
            return self.backend
        if has_pydensecrf():
            return "pydensecrf"
        if num_pixels <= self.max_exact_pixels:
            return "torch"
        raise SegbenchError(
            f"crf: an image of {num_pixels} pixels needs the fast backend: pip install pydensecrf2 "
            f"(the exact torch backend is quadratic and limited to {self.max_exact_pixels} pixels)"
        )

    # -- reference implementation ---------------------------------------------------------
    def _pydensecrf(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        import pydensecrf.densecrf as dcrf  # the optional extra segbench[crf]

        c, h, w = probs.shape
        crf = dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(np.ascontiguousarray(unary(probs).reshape(c, -1)))
        crf.addPairwiseGaussian(sxy=self.pos_xy_std, compat=self.pos_w)
        crf.addPairwiseBilateral(
            sxy=self.bi_xy_std, srgb=self.bi_rgb_std, rgbim=image, compat=self.bi_w
        )
        q = crf.inference(self.iterations)
        return np.asarray(q, dtype=np.float32).reshape(c, h, w)

    # -- exact dense backend ----------------------------------------------------------------
    def _torch(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        c, h, w = probs.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
        )
        pos = torch.stack([xs, ys], -1).reshape(-1, 2)
        rgb = torch.from_numpy(image).double().reshape(-1, 3)
        kernels = [
            GaussianKernel(pos / self.pos_xy_std, self.pos_w),
            GaussianKernel(torch.cat([pos / self.bi_xy_std, rgb / self.bi_rgb_std], 1), self.bi_w),
        ]
        u = torch.from_numpy(unary(probs)).double().reshape(c, -1).T  # N x C
        q = torch.softmax(-u, dim=1)
        for _ in range(self.iterations):
            # Potts compatibility: agreeing neighbours lower the energy of a label.
            q = torch.softmax(-u + sum(k.weight * k.filter(q) for k in kernels), dim=1)
        return q.T.reshape(c, h, w).float().numpy()


def unary(probs: np.ndarray) -> np.ndarray:
    """Negative log-probabilities, clipped like ``pydensecrf.utils.unary_from_softmax``."""
    return -np.log(np.clip(probs, PROB_CLIP, 1.0)).astype(np.float32)


class GaussianKernel:
    """``k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)`` over pre-scaled features, symmetrically
    normalised like the reference (``D^-1/2 K D^-1/2``, ``D = diag(K 1)``, self-term included,
    as the lattice's splat/blur/slice includes it). K is kept whole when it has at most
    ``chunk_elements`` entries, else rebuilt a block of rows at a time so memory stays at
    ``chunk_elements`` whatever the image size."""

    def __init__(self, features: torch.Tensor, weight: float, chunk_elements: int = 1 << 22):
        self.features = features
        self.weight = weight
        n = features.shape[0]
        self.chunk = max(1, chunk_elements // n)
        self.sq_norms = (features**2).sum(1)
        # Small images: build K once instead of once per iteration.
        self.dense = self._rows(0, n) if n * n <= chunk_elements else None
        self.norm = (self._apply(torch.ones(n, 1, dtype=features.dtype)) + 1e-20).rsqrt()

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of K."""
        f = self.features[start:stop]
        sq_dist = self.sq_norms[start:stop, None] + self.sq_norms[None] - 2 * f @ self.features.T
        return torch.exp(-0.5 * sq_dist.clamp_min(0))

    def _apply(self, values: torch.Tensor) -> torch.Tensor:
        """``K @ values``, with K rebuilt ``chunk`` rows at a time when it is too large."""
        if self.dense is not None:
            return self.dense @ values
        out = torch.empty_like(values)
        for start in range(0, self.features.shape[0], self.chunk):
            out[start : start + self.chunk] = self._rows(start, start + self.chunk) @ values
        return out

    def filter(self, q: torch.Tensor) -> torch.Tensor:
        return self.norm * self._apply(self.norm * q)
