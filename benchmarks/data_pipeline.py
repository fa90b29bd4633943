"""Throughput of the training data pipeline, per dataset layout, with 0 and 2 DataLoader workers.

    python benchmarks/data_pipeline.py [--items 400] [--crop 64] [--data NAME=ROOT ...]

By default each dataset is read from its tiny real-layout copy (``segbench.data.fixtures``, built
in a temporary folder): tiny images, so the figures measure per-item overhead — file decoding,
label lookup tables, the albumentations pipeline, collation — rather than pixel throughput.
``--data cityscapes=/data/cityscapes`` measures a real tree instead.

For each dataset the reference is the same loader with no transform (decode only, workers 0),
run in the same process; every other figure is also given as a ratio to it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, RandomSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench.api import build_dataset
from segbench.app import configs
from segbench.data import fixtures as fx


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400, help="items drawn per measurement")
    parser.add_argument("--crop", type=int, default=64, help="training crop (the fixtures are small)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data", nargs="*", default=[], help="NAME=ROOT of real trees to measure instead")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(root) for name, root in (item.split("=", 1) for item in args.data)}
        if not roots:
            roots = {name: fx.make_dataset(name, tmp) for name in fx.MAKERS}
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
