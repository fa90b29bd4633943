"""Dense CRF post-processing: the exact torch backend against Krähenbühl's reference code
(pydensecrf2, skipped when not installed), and CRF improving a noisy unary on a synthetic
image whose class boundaries follow colour edges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import segbench.models.crf as crf_module
from segbench.errors import SegbenchError
from segbench.models.crf import DenseCRF, GaussianKernel, has_pydensecrf

CONF = Path(crf_module.__file__).resolve().parents[1] / "conf" / "postprocess"
needs_reference = pytest.mark.skipif(not has_pydensecrf(), reason="pydensecrf2 not installed")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(h=40, w=48, classes=3, noise=1.0, seed=0):
    """Three flat-coloured regions, and a unary that is the truth plus strong logit noise
    (pixel accuracy ~65%): the situation the CRF is for."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), int)
    gt[:, w // 3 :] = 1
    gt[h // 2 :, 2 * w // 3 :] = 2
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    image = np.clip(palette[gt] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    logits = np.eye(classes)[gt].transpose(2, 0, 1) + rng.normal(0, noise, (classes, h, w))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return image, probs.astype(np.float32), gt


def accuracy(probs, gt):
    return float((probs.argmax(0) == gt).mean())


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_crf_raises_pixel_accuracy(backend):
    image, probs, gt = synthetic()
    refined = DenseCRF(backend=backend)(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    before, after = accuracy(probs, gt), accuracy(refined, gt)
    print(f"\n{backend}: pixel accuracy {before:.3f} -> {after:.3f}")
    assert before < 0.75 and after > 0.97


@needs_reference
def test_torch_backend_matches_reference_exactly_where_lattice_is_exact():
    """No iterations: both return softmax(log p). A kernel narrower than a pixel: the
    lattice's blur vanishes, so self-term and symmetric normalisation must agree exactly."""
    image, probs, _ = synthetic(h=12, w=10)
    for kwargs in [dict(iterations=0), dict(iterations=2, pos_xy_std=0.01, bi_w=0)]:
        ref = DenseCRF(backend="pydensecrf", **kwargs)(image, probs)
        ours = DenseCRF(backend="torch", **kwargs)(image, probs)
        np.testing.assert_allclose(ours, ref, atol=1e-5)


@needs_reference
@pytest.mark.parametrize("kwargs, min_agree, max_mean_diff", [
    ({}, 0.99, 0.005),  # DeepLab defaults
    (dict(bi_xy_std=10, bi_rgb_std=13), 0.99, 0.002),
    (dict(iterations=3, pos_w=1, bi_w=1, bi_xy_std=8, bi_rgb_std=20), 0.99, 0.003),
])
def test_torch_backend_matches_reference(kwargs, min_agree, max_mean_diff):
    """The permutohedral lattice approximates the Gaussian filter, so agreement is close,
    not bitwise."""
    image, probs, _ = synthetic()
    ref = DenseCRF(backend="pydensecrf", **kwargs)(image, probs)
    ours = DenseCRF(backend="torch", **kwargs)(image, probs)
    assert (ref.argmax(0) == ours.argmax(0)).mean() >= min_agree
    assert np.abs(ref - ours).mean() <= max_mean_diff


def test_kernel_chunking_does_not_change_the_result():
    features = torch.randn(300, 5, dtype=torch.float64)
    q = torch.rand(300, 4, dtype=torch.float64)
    whole = GaussianKernel(features, 1.0, chunk_elements=10**9).filter(q)
    chunked = GaussianKernel(features, 1.0, chunk_elements=7 * 300).filter(q)
    torch.testing.assert_close(chunked, whole)


def test_auto_without_reference_falls_back_or_explains(monkeypatch):
    monkeypatch.setattr(crf_module, "has_pydensecrf", lambda: False)
    image, probs, _ = synthetic(h=8, w=8)
    crf = DenseCRF(backend="auto", max_exact_pixels=100)
    assert crf(image, probs).shape == probs.shape  # 64 pixels: exact torch backend
    big_image, big_probs, _ = synthetic(h=20, w=20)
    with pytest.raises(SegbenchError, match="pip install pydensecrf2"):
        crf(big_image, big_probs)
    with pytest.raises(SegbenchError, match="pip install pydensecrf2"):
        DenseCRF(backend="pydensecrf")


def test_mismatched_inputs_are_a_user_error():
    image, probs, _ = synthetic(h=8, w=8)
    with pytest.raises(SegbenchError, match="same size"):
        DenseCRF()(image[:, :5], probs)
    with pytest.raises(SegbenchError, match="backend"):
        DenseCRF(backend="gpu")


def test_configs():
    crf = instantiate(OmegaConf.load(CONF / "crf.yaml"))
    defaults = DenseCRF()
    assert isinstance(crf, DenseCRF) and vars(crf) == vars(defaults)
    assert (crf.iterations, crf.pos_w, crf.pos_xy_std) == (10, 3, 1)  # deeplab-pytorch configs/voc12.yaml
    assert (crf.bi_w, crf.bi_xy_std, crf.bi_rgb_std) == (4, 67, 3)
    assert "_target_" not in OmegaConf.load(CONF / "none.yaml")  # "no post-processing"
