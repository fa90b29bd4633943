"""Augmentation: image and label stay aligned under scale / crop / flip / rotate / elastic,
labels only ever hold valid train ids or 255, and DataLoader workers draw different
augmentations."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from segbench.data.transforms import UNetElastic, WorkerSeededCompose, train_pipeline

N_CLASSES = 19
# Well separated colours, one per class, so the class under any image pixel is recoverable.
COLOURS = np.array([(40 * (c % 5) + 30, 50 * ((c // 5) % 4) + 40, 200 - 9 * c) for c in range(N_CLASSES)], np.uint8)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def pattern(seed: int = 0, shape=(72, 96), block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric random blocks of classes (any flip/shift/scale of one but not the other shows)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, N_CLASSES, size=(shape[0] // block, shape[1] // block))
    label = np.kron(cells, np.ones((block, block), np.int64)).astype(np.uint8)
    label[:block, :block] = 255  # an ignore region, as VOC's band
    image = COLOURS[np.where(label == 255, 0, label)]
    return image, label


def misaligned_fraction(image: np.ndarray, label: np.ndarray) -> float:
    """Share of interior label pixels whose image colour is not their class colour."""
    image = image.astype(float)
    interior = cv2.erode((label != 255).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    same = np.ones_like(interior)
    for dy in (-2, -1, 0, 1, 2):  # away from class boundaries, where interpolation blends colours
        for dx in (-2, -1, 0, 1, 2):
            same &= np.roll(label, (dy, dx), axis=(0, 1)) == label
    keep = interior & same
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    if keep.sum() < 50:
        return 0.0
    dist = np.linalg.norm(image[keep][:, None, :] - COLOURS[None].astype(float), axis=2)
    return float((dist.argmin(1) != label[keep]).mean())


PIPELINES = {
    "scale_crop_flip": dict(crop_size=[48, 48], scale_range=(0.5, 2.0), hflip=True),
    "rotate_blur": dict(crop_size=[64, 64], scale_range=(0.75, 1.5), hflip=True, rotate=10, blur_p=0.0),
    "unet_elastic_mirror": dict(crop_size=[64, 64], scale_range=None, hflip=True, vflip=True,
                                elastic={"grid": 3, "sigma": 10.0}, border="reflect"),
    "pad_larger_than_image": dict(crop_size=[96, 128], scale_range=(0.5, 1.0), hflip=True),
}


@pytest.mark.parametrize("name", PIPELINES)
def test_image_and_label_stay_aligned(name):
    pipe = train_pipeline(mean=MEAN, std=STD, **PIPELINES[name])
    for seed in range(12):
        # Seeded draws: strong elastic folds (sigma 10 px on a 64 px crop) push ~1% of random draws
        # past the check's 2 px boundary margin, so an unseeded test failed now and then.
        pipe.set_random_seed(seed)
        image, label = pattern(seed)
        out = pipe(image=image, mask=label)
        assert misaligned_fraction(out["image"], out["mask"]) < 0.02, f"{name}, seed {seed}"


def test_the_alignment_check_catches_a_flip_of_the_image_alone():
    image, label = pattern(3)
    pipe = train_pipeline(mean=MEAN, std=STD, crop_size=[72, 96], scale_range=None, hflip=False)
    out = pipe(image=image[:, ::-1].copy(), mask=label)
    assert misaligned_fraction(out["image"], out["mask"]) > 0.5


@pytest.mark.parametrize("name", PIPELINES)
def test_labels_hold_only_valid_ids_or_ignore(name):
    pipe = train_pipeline(mean=MEAN, std=STD, **PIPELINES[name])
    valid = set(range(N_CLASSES)) | {255}
    seen = set()
    for seed in range(12):
        image, label = pattern(seed)
        mask = pipe(image=image, mask=label)["mask"]
        assert mask.dtype == np.uint8
        seen |= set(np.unique(mask).tolist())
    assert seen <= valid


def test_constant_border_pads_label_with_ignore_and_reflect_mirrors_it():
    image, label = pattern(1, shape=(40, 40))
    label[:] = 3
    const = train_pipeline(crop_size=[64, 64], scale_range=None, hflip=False)(image=image, mask=label)["mask"]
    assert (const == 255).any() and set(np.unique(const)) == {3, 255}
    mirror = train_pipeline(crop_size=[64, 64], scale_range=None, hflip=False, border="reflect")(
        image=image, mask=label)["mask"]
    assert set(np.unique(mirror)) == {3}


def test_unet_elastic_is_a_smooth_coarse_grid_field():
    t = UNetElastic(grid=3, sigma=10.0, p=1.0)
    t.set_random_seed(0)
    params = t.get_params_dependent_on_data({"shape": (128, 128)}, {})
    xx, yy = np.meshgrid(np.arange(128), np.arange(128))
    dx, dy = params["map_x"] - xx, params["map_y"] - yy
    assert 2 < np.abs(dx).max() < 60 and 2 < np.abs(dy).max() < 60  # ~N(0, 10 px) at the grid points
    assert np.abs(np.diff(dx, axis=1)).max() < 1.0  # bicubic: smooth, no per-pixel noise
    grid = np.zeros((128, 128), np.uint8)
    grid[::16] = 1
    out = A.Compose([t])(image=np.zeros((128, 128, 3), np.uint8), mask=grid)["mask"]
    assert set(np.unique(out)) <= {0, 1}  # nearest neighbour for labels


class _Draws(Dataset):
    def __init__(self):
        self.pipe = train_pipeline(crop_size=[16, 16], scale_range=(0.5, 2.0), hflip=True, rotate=30)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
        return torch.from_numpy(self.pipe(image=image, mask=np.zeros((32, 32), np.uint8))["image"]).sum()


def test_workers_and_epochs_draw_different_augmentations():
    torch.manual_seed(0)
    ds = _Draws()
    epochs = [[round(float(x), 3) for x in DataLoader(ds, batch_size=1, num_workers=2)] for _ in range(2)]
    # Worker 0 serves items 0, 2, ...; worker 1 items 1, 3, ...: their k-th draws must differ.
    assert epochs[0][0::2] != epochs[0][1::2]
    assert epochs[0] != epochs[1]


# ---- crop before resize: ScaleCrop resamples only the crop, with the old chain's draws -----------
def old_scale_pad_crop(scale_range, crop, fill):
    lo, hi = scale_range
    return WorkerSeededCompose([A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
                      A.PadIfNeeded(min_height=crop[0], min_width=crop[1], border_mode=cv2.BORDER_CONSTANT,
                                    fill=fill, fill_mask=255),
                      A.RandomCrop(height=crop[0], width=crop[1])])


@pytest.mark.parametrize("shape, crop, scale_range", [((72, 96), (48, 40), (0.5, 2.0)),    # crops inside, and padded
                                                      ((40, 64), (48, 48), (0.75, 1.5)),   # always padded in height
                                                      ((128, 256), (71, 71), (0.5, 2.0))])  # a 713 crop of a 2048x1024 frame, /8
def test_scale_crop_equals_resize_then_pad_then_crop(shape, crop, scale_range):
    """Seeded alike, ScaleCrop draws the same scale, padding and crop offset as RandomScale ->
    PadIfNeeded -> RandomCrop (the pipeline before): the same label pixels exactly, the image
    within OpenCV's rounding, the same output size and pad fill. So the distribution of training
    crops is unchanged; only the work is (a crop's pixels resampled, not the whole frame's)."""
    from segbench.data.transforms import ScaleCrop

    fill = (124.0, 116.0, 104.0)
    old, new = old_scale_pad_crop(scale_range, crop, fill), WorkerSeededCompose([ScaleCrop(scale_range, *crop, fill=fill)])
    rng = np.random.default_rng(0)
    padded_seen = 0
    for seed in range(20):
        label = rng.integers(0, N_CLASSES, shape, dtype=np.uint8)
        image = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (5, 5), 2)  # smooth, like photos
        old.set_random_seed(seed)
        new.set_random_seed(seed)
        a, b = old(image=image, mask=label), new(image=image, mask=label)
        assert b["image"].shape == (*crop, 3) and b["mask"].shape == crop and b["image"].dtype == np.uint8
        np.testing.assert_array_equal(b["mask"], a["mask"])
        diff = np.abs(b["image"].astype(int) - a["image"].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.2, (seed, diff.max(), diff.mean())
        padded_seen += int((b["mask"] == 255).any())
    assert padded_seen > 0  # the padding path was exercised


def test_train_pipeline_crops_before_resizing_where_nothing_moves_the_window():
    from segbench.data.transforms import ScaleCrop

    def geometry(**kw):
        return [type(t).__name__ for t in train_pipeline(crop_size=[32, 32], **kw).transforms][:3]

    assert geometry(scale_range=(0.5, 2.0))[0] == ScaleCrop.__name__
    assert geometry(scale_range=(0.5, 2.0), rotate=10)[:2] == ["RandomScale", "Rotate"]  # rotate needs the frame
    assert geometry(scale_range=(0.5, 2.0), border="reflect")[0] == "RandomScale"
    assert geometry(scale_range=None)[:2] == ["PadIfNeeded", "RandomCrop"]


def test_scale_and_flip_are_drawn_independently():
    """Each step used to be seeded with the sample's seed, so its first draw was the same number:
    a flipped crop was always a zoomed-out one (mean 1/scale 1.24 flipped vs 0.63 not, measured
    with the old seeding). One stream per sample makes the draws independent."""
    size = 200
    image = np.repeat(np.tile(np.arange(size, dtype=np.uint8)[None, :], (size, 1))[..., None], 3, 2)  # x-coded
    pipe = train_pipeline(crop_size=[20, 20], scale_range=(0.5, 2.0), hflip=True)
    inverse_scale, flipped = [], []
    for seed in range(300):
        pipe.set_random_seed(seed)
        row = pipe(image=image, mask=np.zeros((size, size), np.uint8))["image"][10, :, 0].astype(float)
        step = (row[-1] - row[0]) / 19  # columns per output pixel: 1/scale, negative when flipped
        inverse_scale.append(abs(step))
        flipped.append(step < 0)
    inverse_scale, flipped = np.array(inverse_scale), np.array(flipped)
    assert 0.4 < flipped.mean() < 0.6
    assert abs(inverse_scale[flipped].mean() - inverse_scale[~flipped].mean()) < 0.15
