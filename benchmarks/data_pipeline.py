"""Throughput of the training data pipeline, per dataset layout, with 0 and 2 DataLoader workers.

    python benchmarks/data_pipeline.py [--items 400] [--crop 64] [--data NAME=ROOT ...]
    python benchmarks/data_pipeline.py --per-core [--camvid ROOT] [--frames 6] [--rounds 5]

By default each dataset is read from its tiny real-layout copy (``segbench.data.fixtures``, built
in a temporary folder): tiny images, so the figures measure per-item overhead — file decoding,
label lookup tables, the albumentations pipeline, collation — rather than pixel throughput.
``--data cityscapes=/data/cityscapes`` measures a real tree instead.

For each dataset the reference is the same loader with no transform (decode only, workers 0),
run in the same process; every other figure is also given as a ratio to it.

``--per-core``: items/s on one core (in-process, one thread) of decode only, of the training
pipeline as it was (whole frame scaled, then padded and cropped; albumentations' Normalize and
float32 / int64 tensors in the worker) and as it is (the crop window picked first and only it
resampled; uint8 handed over, normalised on the device), interleaved in rounds, with the bytes a
pixel each hands over. On the real CamVid (``--camvid``, the data config's pipeline) and on a
Cityscapes tree of full-size 2048x1024 frames built in a temporary folder (``--frames``; CamVid
frames upscaled when ``--camvid`` is given, else smooth noise) under the PSPNet recipe's 713 crops.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, RandomSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import header, interleaved, ratio  # noqa: E402

from segbench.api import build_dataset
from segbench.app import configs
from segbench.data import fixtures as fx
from segbench.data.normalization import Normalization
from segbench.data.transforms import ScaleCrop, WorkerSeededCompose
from segbench.tables import markdown_table


def images_per_second(dataset, workers: int, items: int, batch: int) -> float:
    sampler = RandomSampler(dataset, replacement=True, num_samples=items, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        persistent_workers=False, collate_fn=None if dataset.transform else _first)
    start = time.perf_counter()
    seen = 0
    for batch_ in loader:
        seen += len(batch_["id"]) if isinstance(batch_, dict) else len(batch_)
    return seen / (time.perf_counter() - start)


def _first(items):  # decode-only items differ in size: do not stack them
    return items


# ---- --per-core: before / after, decode-only as the reference -------------------------------------
CAMVID_TO_CITYSCAPES = np.array([23, 11, 17, 7, 8, 21, 20, 13, 26, 24, 33, 0], np.uint8)  # sky, building, ... void


def full_size_cityscapes(root: Path, frames: int, camvid: Path | None) -> Path:
    """``frames`` 2048x1024 training frames in the Cityscapes layout (one city), from CamVid
    frames upscaled (photographic content, as PNG decoding sees it) or from smooth noise."""
    rng = np.random.default_rng(0)
    sources = sorted((camvid / "train").glob("*.png"))[:frames] if camvid else []
    for k in range(frames):
        if sources:
            image = cv2.cvtColor(cv2.imread(str(sources[k])), cv2.COLOR_BGR2RGB)
            label = CAMVID_TO_CITYSCAPES[np.minimum(cv2.imread(str(camvid / "trainannot" / sources[k].name), 0), 11)]
        else:
            image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
            label = rng.choice(CAMVID_TO_CITYSCAPES[:11], (16, 32)).astype(np.uint8)
        image = cv2.resize(image, (2048, 1024), interpolation=cv2.INTER_CUBIC)
        label = cv2.resize(label, (2048, 1024), interpolation=cv2.INTER_NEAREST)
        stem = f"aachen_{k:06d}_000019"
        fx.save_png(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", image)
        fx.save_png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", label)
    return root


def before_pipeline(pipeline, normalization: Normalization) -> A.Compose:
    """The training pipeline as it was: the whole frame scaled, padded, cropped; normalised in the worker."""
    steps = []
    for t in pipeline.transforms:
        if isinstance(t, ScaleCrop):
            lo, hi = t.scale_range
            steps += [A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
                      A.PadIfNeeded(min_height=t.height, min_width=t.width, border_mode=cv2.BORDER_CONSTANT,
                                    fill=t.fill, fill_mask=255),
                      A.RandomCrop(height=t.height, width=t.width)]
        else:
            steps.append(t)
    steps.append(A.Normalize(mean=normalization.mean, std=normalization.std, max_pixel_value=255.0))
    return WorkerSeededCompose(steps)


def per_core(name: str, cfg, root: Path, items: int, rounds: int) -> list:
    """One row: decode-only, before and after items/s on one core, and bytes/pixel handed over."""
    split = cfg.data.train_split
    after = build_dataset(name, root, split, transform=instantiate(cfg.data.transforms.train))
    old = before_pipeline(after.transform, Normalization.from_data_config(cfg.data))
    picks = [int(i) for i in np.random.default_rng(0).integers(0, len(after), items)]

    def decode():
        for i in picks:
            after.load(i)

    def train_before():
        for seed, i in enumerate(picks):
            old.set_random_seed(seed)  # as SeededView seeds every sample
            out = old(**dict(zip(("image", "mask"), after.load(i))))
            handed = (torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float(),
                      torch.from_numpy(out["mask"]).long())
        train_before.bytes = sum(t.numel() * t.element_size() for t in handed) / handed[1].numel()

    def train_after():
        for seed, i in enumerate(picks):
            after.transform.set_random_seed(seed)
            sample = after[i]
        train_after.bytes = sum(sample[k].numel() * sample[k].element_size() for k in ("image", "label")) \
            / sample["label"].numel()

    times = interleaved({"decode": decode, "before": train_before, "after": train_after}, rounds, warmup=1)
    rate = {k: items / statistics.median(v) for k, v in times.items()}
    return [f"{name} ({len(after)} frames {after.load(0)[0].shape[1]}x{after.load(0)[0].shape[0]}, "
            f"crop {list(cfg.data.transforms.train.crop_size)})", f"{rate['decode']:.2f}",
            f"{rate['before']:.2f} ({ratio(times, 'decode', 'before'):.2f}x)",
            f"{rate['after']:.2f} ({ratio(times, 'decode', 'after'):.2f}x)",
            f"{ratio(times, 'before', 'after'):.2f}x", f"{train_before.bytes:.0f} -> {train_after.bytes:.0f}"]


def main_per_core(args) -> int:
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    print(header("Training data pipeline on one core: before / after, next to decode only", args))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        camvid = Path(args.camvid) if args.camvid else None
        if camvid:
            cfg = configs.compose("datatool", ["data=camvid", f"data.root={camvid}"])
            rows.append(per_core("camvid", cfg, camvid, args.per_round, args.rounds))
        city = full_size_cityscapes(Path(tmp) / "cityscapes", args.frames, camvid)
        cfg = configs.compose("datatool", ["data=cityscapes", f"data.root={city}",
                                           "data.transforms.train.crop_size=[713,713]"])  # the PSPNet recipe's
        rows.append(per_core("cityscapes", cfg, city, args.per_round, args.rounds))
    print(f"{args.per_round} items per round, {args.rounds} interleaved rounds, medians; the ratio in brackets: "
          f"pipeline items/s / decode-only items/s\n")
    print(markdown_table(["data", "decode only items/s", "train before items/s", "train after items/s",
                          "after / before", "bytes/pixel handed over"], rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-core", action="store_true", help="before/after on one core (see the module doc)")
    parser.add_argument("--camvid", default=None, help="--per-core: the real CamVid root (e.g. ../shared/data/camvid)")
    parser.add_argument("--frames", type=int, default=6, help="--per-core: full-size Cityscapes frames to build")
    parser.add_argument("--per-round", type=int, default=6, help="--per-core: items per candidate and round")
    parser.add_argument("--rounds", type=int, default=5, help="--per-core: interleaved rounds")
    parser.add_argument("--items", type=int, default=400, help="items drawn per measurement")
    parser.add_argument("--crop", type=int, default=64, help="training crop (the fixtures are small)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data", nargs="*", default=[], help="NAME=ROOT of real trees to measure instead")
    args = parser.parse_args(argv)
    if args.per_core:
        return main_per_core(args)

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(root) for name, root in (item.split("=", 1) for item in args.data)}
        if not roots:
            roots = {name: fx.make_dataset(name, tmp) for name in fx.makers()}
        print(f"segbench data pipeline throughput: {args.items} items/measurement, crop {args.crop}, "
              f"batch {args.batch}, torch intra-op threads {torch.get_num_threads()}")
        print(f"{'dataset':<12}{'split':<7}{'n':>5}  {'decode w0':>10}  {'train w0':>14}  {'train w2':>14}")
        for name, root in roots.items():
            cfg = configs.compose("datatool", [f"data={name}", f"data.root={root}",
                                               f"data.transforms.train.crop_size=[{args.crop},{args.crop}]"])
            split = cfg.data.train_split
            plain = build_dataset(name, root, split)
            train = build_dataset(name, root, split, transform=instantiate(cfg.data.transforms.train))
            ref = images_per_second(plain, 0, args.items, args.batch)
            w0 = images_per_second(train, 0, args.items, args.batch)
            w2 = images_per_second(train, 2, args.items, args.batch)
            print(f"{name:<12}{split:<7}{len(train):>5}  {ref:>8.0f}/s  {w0:>6.0f}/s ({w0 / ref:4.2f}x)"
                  f"  {w2:>6.0f}/s ({w2 / ref:4.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
