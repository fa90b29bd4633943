"""``segbench data stats data=<name> data.root=<dir>``: class pixel counts and SegNet's weights.

Counts class pixels over a split and writes SegNet's median-frequency class weights to
``<data.root>/class_weights_<split>.json``; train with them via ``loss.class_weights=[...]``
(the line is printed) or ``loss.class_weights=${class_weights:<file>}`` (:mod:`segbench.data.class_weights`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from segbench.data.base import IGNORE_INDEX
from segbench.data.walk import DATASETS, build, map_samples
from segbench.data.workers import num_workers
from segbench.errors import SegbenchError
from segbench.io import write_json


def _count(args):
    split, index = args
    ds = DATASETS[split]
    label = ds.load_label(index)
    if label is None:
        return None
    counts = np.bincount(label.ravel(), minlength=256)[:256]
    return counts, label.size


def median_frequency_weights(pixels: np.ndarray, present_pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SegNet's class balancing (Badrinarayanan et al. §3.2, after Eigen & Fergus 2015):
    ``freq_c = pixels of c / total pixels of the images where c is present`` and
    ``w_c = median(freq) / freq_c``. The median is over classes that occur; a class that
    never occurs gets weight 1.0 (it cannot contribute to the loss anyway)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    present_pixels = np.asarray(present_pixels, dtype=np.float64)
    occurs = present_pixels > 0
    freq = np.zeros_like(pixels)
    freq[occurs] = pixels[occurs] / present_pixels[occurs]
    weights = np.ones_like(pixels)
    if occurs.any():
        weights[occurs] = np.median(freq[occurs]) / freq[occurs]
    return freq, weights


def stats(cfg: DictConfig) -> dict:
    opts = cfg.get("stats", {}) or {}
    split = opts.get("split") or cfg.data.train_split
    ds = build(cfg, split)
    num_classes = ds.num_classes
    pixels = np.zeros(num_classes, dtype=np.int64)
    present_pixels = np.zeros(num_classes, dtype=np.int64)
    images_with = np.zeros(num_classes, dtype=np.int64)
    ignored = total = 0
    jobs = [(split, i) for i in range(len(ds))]
    workers = num_workers(opts.get("workers", 0) or 0, len(jobs))
    for result in map_samples(_count, jobs, {split: ds}, workers, desc=f"counting {split}"):
        if result is None:
            continue
        counts, size = result
        per_class = counts[:num_classes]
        pixels += per_class
        occurs = per_class > 0
        present_pixels[occurs] += size  # all pixels of the image, ignore included (SegNet)
        images_with += occurs
        ignored += int(counts[IGNORE_INDEX])
        total += size
    if total == 0:
        raise SegbenchError(f"{ds.name} split '{split}' has no labels to count (test split?)")
    freq, weights = median_frequency_weights(pixels, present_pixels)
    labelled = max(int(pixels.sum()), 1)

    print(f"segbench data stats: {ds.name} split '{split}' at {cfg.data.root}: {len(ds)} images, "
          f"{total} pixels, {ignored / total:.2%} ignored (255)")
    width = max(len(n) for n in ds.class_names)
    print(f"  {'id':>3} {'class':<{width}} {'pixels':>12} {'share':>8} {'images':>7} {'freq':>8} {'weight':>8}")
    for c, name in enumerate(ds.class_names):
        print(f"  {c:>3} {name:<{width}} {pixels[c]:>12} {pixels[c] / labelled:>8.4f} {images_with[c]:>7} "
              f"{freq[c]:>8.4f} {weights[c]:>8.4f}")
    absent = [ds.class_names[c] for c in range(num_classes) if images_with[c] == 0]
    if absent:
        print(f"note: never present in this split (weight set to 1.0): {', '.join(absent)}")

    output = Path(opts.get("output") or Path(cfg.data.root).expanduser() / f"class_weights_{split}.json")
    result = {
        "dataset": ds.name, "split": split, "root": str(cfg.data.root), "images": len(ds),
        "method": "median_frequency (SegNet): w_c = median(freq) / freq_c, "
                  "freq_c = pixels of c / total pixels of images containing c",
        "class_names": list(ds.class_names), "pixel_counts": pixels.tolist(),
        "image_counts": images_with.tolist(), "ignored_pixels": ignored, "total_pixels": total,
        "frequency": [round(float(f), 8) for f in freq],
        "class_weights": [round(float(w), 6) for w in weights],
    }
    try:
        write_json(output, result)
    except OSError as err:
        raise SegbenchError(f"cannot write {output} ({err.strerror}); choose another file with stats.output=<path>") from None
    print(f"wrote {output}")
    print("train with these weights:  loss.class_weights="
          + "[" + ",".join(f"{w:.4f}" for w in weights) + "]")
    return result
