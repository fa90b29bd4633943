"""A built-in synthetic dataset in the PASCAL VOC layout, so the demo and the tests need no download.

Scenes are made so that a colour threshold cannot solve them: every object gets a random
colour and texture, the background is textured noise drawn from the same colours, objects
overlap, and the five classes differ only in *shape* (disc, square, triangle, ring, bar).
Like VOC, a thin 255 band marks object outlines. Generation is seeded, so every machine builds
byte-identical files, and atomic: the set is written to a temporary folder and renamed into
place, so an interrupted generation is never mistaken for a finished one.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segbench.data.base import IGNORE_INDEX, voc_colormap
from segbench.data.card import DatasetCard
from segbench.data.conversion import build_dir_atomically
from segbench.data.voc import VOCSegmentation
from segbench.errors import SegbenchError
from segbench.io import read_json, write_json

SHAPES = ("background", "disc", "square", "triangle", "ring", "bar")
MANIFEST = "synthetic.json"


def _textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour blobs + stripes + pixel noise, H×W×3 float in 0..255."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    return image + stripes[..., None] + rng.normal(0, 6, size=image.shape)


def _shape_mask(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """A binary mask of one random instance of shape ``kind`` (index into SHAPES)."""
    mask = np.zeros((size, size), np.uint8)
    radius = int(rng.uniform(0.16, 0.28) * size)
    cx, cy = (int(v) for v in rng.uniform(radius, size - radius, size=2))
    angle = rng.uniform(0, 180)
    name = SHAPES[kind]
    if name == "disc":
        cv2.circle(mask, (cx, cy), radius, 1, -1)
    elif name == "ring":
        cv2.circle(mask, (cx, cy), radius, 1, max(2, radius // 3))
    elif name == "square":
        box = cv2.boxPoints(((cx, cy), (1.6 * radius, 1.6 * radius), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    elif name == "triangle":
        corners = [angle + k * 120 for k in range(3)]
        pts = [(cx + radius * np.cos(np.radians(a)), cy + radius * np.sin(np.radians(a))) for a in corners]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
    elif name == "bar":
        box = cv2.boxPoints(((cx, cy), (2.4 * radius, 0.45 * radius), angle))
        cv2.fillPoly(mask, [box.astype(np.int32)], 1)
    return mask.astype(bool)


def _class_texture(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """The fill of an object: two random colours in a pattern that belongs to its class.

    As in real images, a class is told apart by shape *and* surface pattern, never by colour:
    both colours are drawn at random for every object, and the background carries stripes
    of its own (random orientation, lower contrast).
    """
    yy, xx = np.mgrid[0:size, 0:size] + rng.integers(0, 8, size=2)[:, None, None]
    pattern = {
        "disc": (yy // 3) % 2,                  # horizontal stripes
        "square": (yy // 4 + xx // 4) % 2,      # checkerboard
        "triangle": (xx // 3) % 2,              # vertical stripes
        "ring": np.zeros_like(xx),              # plain
        "bar": ((xx + yy) // 4) % 2,            # diagonal stripes
    }[SHAPES[kind]]
    first = rng.uniform(0, 255, size=3)
    second = np.clip(first + rng.choice([-1, 1], size=3) * rng.uniform(50, 90, size=3), 0, 255)
    fill = np.where(pattern[..., None] == 1, second, first)
    return fill + rng.normal(0, 6, size=fill.shape)


def make_scene(rng: np.random.Generator, size: int, max_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One image (H×W×3 uint8) and its VOC-style label (class ids, 255 outline band)."""
    image = _textured_background(rng, size)
    label = np.zeros((size, size), np.uint8)
    outline = np.zeros((size, size), bool)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        kind = int(rng.integers(1, len(SHAPES)))
        mask = _shape_mask(rng, kind, size)
        image[mask] = _class_texture(rng, kind, size)[mask]
        label[mask] = kind
        outline &= ~mask  # an occluder hides the outline beneath it
        outline |= cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, kernel).astype(bool) & ~mask
    label[outline] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate(root: Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Write the dataset under ``root`` in the VOC layout (atomically: temp dir, then rename;
    a copy another process finished first is kept, it is identical)."""
    def build(tmp: Path) -> None:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        palette = voc_colormap().flatten().tolist()
        splits = {"train": num_train, "val": num_val}
        index = 0
        for split, count in splits.items():
            ids = []
            for _ in range(count):
                image, label = make_scene(rng, image_size)
                sample_id = f"synth_{index:06d}"
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{sample_id}.jpg", quality=95)
                png = Image.fromarray(label, mode="P")
                png.putpalette(palette)
                png.save(tmp / "SegmentationClass" / f"{sample_id}.png")
                ids.append(sample_id)
                index += 1
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        write_json(tmp / MANIFEST, {"num_train": num_train, "num_val": num_val, "image_size": image_size,
                                    "seed": seed})

    build_dir_atomically(Path(root), build, replace=False)


class SyntheticShapes(VOCSegmentation):
    """Shapes on textured noise, generated into ``root`` on first use (VOC layout, 6 classes)."""

    name = "synthetic"
    class_names = SHAPES
    splits = ("train", "val")
    layout = VOCSegmentation.layout + f"\n    {MANIFEST}   (written last by the generator)"
    source = "generated by segbench itself on first use (delete the folder to regenerate)"
    card = DatasetCard(no_download="the synthetic set is generated on first use")

    def __init__(self, root, split, transform=None, num_train: int = 400, num_val: int = 100,
                 image_size: int = 64, seed: int = 0):
        wanted = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
        manifest = Path(root) / MANIFEST
        if not manifest.exists():
            generate(Path(root), **wanted)
        if not manifest.exists():  # generate() never overwrites a folder that holds something
            raise SegbenchError(f"{root} holds files but no {MANIFEST}, so it is not a synthetic set segbench "
                                f"generated; point data.root at an empty or missing folder")
        found = read_json(manifest)
        if found != wanted:
            raise SegbenchError(
                f"synthetic data at {root} was generated with {found}, but the config asks for "
                f"{wanted}; delete {root} to regenerate it, or point data.root elsewhere"
            )
        self.expected_counts = {"train": num_train, "val": num_val}
        super().__init__(root, split, transform)
