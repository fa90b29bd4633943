"""Workers hand over uint8; the device normalises (segbench.data.normalization), giving the
network the very inputs the CPU pipelines gave it before (albumentations' Normalize, bit for
bit; SegNet-Basic's LCN, to float tolerance)."""
import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from segbench.data.base import IMAGENET_MEAN, IMAGENET_STD
from segbench.data.normalization import Normalization, network_input, rgb_images
from segbench.data.synthetic import SyntheticShapes
from segbench.data.transforms import eval_pipeline, train_pipeline
from segbench.errors import SegbenchError

RNG = np.random.default_rng(0)


def old_lcn(img: np.ndarray, kernel_size: int = 9, sigma: float = 2.0) -> np.ndarray:
    """The worker-side LCN segbench ran before (transforms.LocalContrastNorm.apply), kept as the
    reference the device version must reproduce."""
    k = (kernel_size, kernel_size)
    x = img.astype(np.float32) / 255.0
    mean = cv2.GaussianBlur(x, k, sigma, borderType=cv2.BORDER_REFLECT_101).mean(axis=2, keepdims=True)
    centred = x - mean
    local_sd = np.sqrt(cv2.GaussianBlur(centred * centred, k, sigma, borderType=cv2.BORDER_REFLECT_101)
                       .mean(axis=2, keepdims=True))
    floor = max(float(local_sd.mean()), 1e-4)
    return centred / np.maximum(local_sd, floor)


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                      ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])
def test_device_mean_std_equals_the_old_worker_normalize_bit_for_bit(mean, std):
    images = [RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8) for _ in range(2)]
    old = np.stack([A.Normalize(mean=mean, std=std, max_pixel_value=255.0)(image=im)["image"] for im in images])
    new = Normalization(mean, std)(as_batch(images))
    assert new.dtype == torch.float32
    assert torch.equal(new, torch.from_numpy(old.transpose(0, 3, 1, 2)))


def test_device_lcn_equals_the_old_worker_lcn():
    images = [RNG.integers(0, 256, (24, 31, 3), dtype=np.uint8), RNG.integers(100, 103, (24, 31, 3), dtype=np.uint8)]
    old = np.stack([old_lcn(im) for im in images]).transpose(0, 3, 1, 2)
    new = Normalization(kind="lcn")(as_batch(images))
    np.testing.assert_allclose(new.numpy(), np.broadcast_to(old, new.shape), atol=1e-4, rtol=1e-5)
    # a flat image: both are rounding noise amplified up to the 1e-4 floor, near 0
    flat = Normalization(kind="lcn")(as_batch([np.full((24, 31, 3), 90, np.uint8)]))
    assert float(flat.abs().max()) < 1e-3 and float(np.abs(old_lcn(np.full((24, 31, 3), 90, np.uint8))).max()) < 1e-3


def test_lcn_is_contrast_invariant():
    image = (RNG.integers(0, 128, size=(40, 48, 3)) * 2).astype(np.uint8)
    lcn = Normalization(kind="lcn")
    full, half = lcn(as_batch([image])), lcn(as_batch([image // 2]))  # the same scene at half the contrast
    torch.testing.assert_close(full, half, atol=1e-4, rtol=0)
    assert abs(float(full.mean())) < 0.05 and 0.5 < float(full.std()) < 1.5


def test_channels_last_is_laid_out_on_the_device_side():
    x = Normalization()(as_batch([RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)]), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_workers_hand_over_four_bytes_a_pixel(synthetic_root):
    """uint8 image (3 B) + uint8 label (1 B), from the train and the val pipeline; before:
    float32 image (12 B) + int64 label (8 B)."""
    for split, transform in (("train", train_pipeline(crop_size=24)), ("val", eval_pipeline())):
        sample = SyntheticShapes(synthetic_root, split, transform=transform, num_train=32, num_val=8, image_size=32)[0]
        image, label = sample["image"], sample["label"]
        assert image.dtype == torch.uint8 and label.dtype == torch.uint8 and image.shape[0] == 3
        pixels = label.numel()
        assert (image.numel() * image.element_size() + label.numel() * label.element_size()) / pixels == 4


def test_a_uint8_batch_is_never_fed_unnormalised():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs its normalisation"):
        network_input(images)
    assert network_input(images.float()).dtype == torch.float32  # a ready float input passes as is
    with pytest.raises(TypeError, match="uint8"):
        Normalization()(images.float())


def test_rgb_images_are_the_batch_as_read():
    rgb = RNG.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    assert np.array_equal(rgb_images(as_batch(list(rgb))), rgb)
    with pytest.raises(ValueError, match="uint8"):
        rgb_images(torch.zeros(1, 3, 2, 2))


def test_an_unknown_normalisation_fails_when_the_pipeline_is_built():
    with pytest.raises(SegbenchError, match="normalize must be one of meanstd, lcn"):
        eval_pipeline(normalize="zscore")
