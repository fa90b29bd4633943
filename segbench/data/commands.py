"""``segbench data download | check | prepare | stats data=<name> data.root=<dir>``.

* ``download`` fetches, verifies and unpacks the public archives, then prepares and checks
  (:mod:`segbench.data.download`).
* ``check`` builds every split from ``data.root``, prints the counts next to the official
  ones, then opens every image and label once: missing, unreadable and mis-sized files and
  label values outside the dataset's encoding are listed by path. Exit status 1 if any.
* ``prepare`` runs the dataset's one-off conversion (SBD ``.mat`` → PNG + trainaug list,
  Cityscapes labelTrainIds, SUN RGB-D toolbox ``.mat`` → PNG); see :mod:`segbench.data.prepare`.
* ``stats`` counts class pixels over a split and writes SegNet's median-frequency class
  weights to ``<data.root>/class_weights_<split>.json``; train with them via
  ``loss.class_weights=[...]`` (the line is printed) or :func:`load_class_weights`.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from segbench.trust import instantiate_unwrapped
from segbench.data import prepare as prep
from segbench.data.base import IGNORE_INDEX
from segbench.errors import DatasetNotFoundError, SegbenchError

PARALLEL_FROM = 200  # samples; below this a process pool costs more than it saves


def run(cfg: DictConfig):
    action = cfg.get("action", "check")
    actions = {"check": check, "prepare": prepare_dataset, "stats": stats, "download": download}
    if action not in actions:
        raise SegbenchError(f"unknown data action '{action}'; use one of: {', '.join(actions)}")
    return actions[action](cfg)


def download(cfg: DictConfig):
    from segbench.data.download import download as fetch_unpack_check

    return fetch_unpack_check(cfg)


def build(cfg: DictConfig, split: str, **overrides):
    """The dataset of ``cfg.data`` for ``split``, without transforms."""
    return instantiate_unwrapped(cfg.data.dataset, split=split, **overrides)


def dataset_class(cfg: DictConfig):
    from hydra.utils import get_class

    return get_class(cfg.data.dataset._target_)


# ---- check --------------------------------------------------------------------------------
# The datasets being walked, by split. Pool workers are forked after this is set, so they
# inherit it instead of receiving a pickled dataset (ISBI's, for one, holds whole stacks) per task.
_DATASETS: dict = {}


def _inspect(args) -> list[tuple[str, str, str]]:
    """Open one sample's files; return ``(kind, path, detail)`` for each problem found."""
    split, index, decode = args
    ds = _DATASETS[split]
    image_path, label_path = ds.samples[index]
    issues = []
    if not Path(image_path).exists():
        issues.append(("missing image", str(image_path), ""))
    if label_path is not None and not Path(label_path).exists():
        issues.append(("missing label", str(label_path), f"(for {Path(image_path).name})"))
    if issues or not decode:
        return issues
    image = raw = None
    try:
        image = ds.read_image_at(index)
    except SegbenchError as err:
        issues.append(("unreadable", str(image_path), _detail(err, image_path)))
    if label_path is not None:
        try:
            raw = ds.read_raw_label_at(index)
        except SegbenchError as err:
            issues.append(("unreadable", str(label_path), _detail(err, label_path)))
    if raw is not None:
        if raw.ndim != 2:
            issues.append(("unreadable", str(label_path), f"expected one channel, got shape {raw.shape}"))
        else:
            bad = ds.unexpected_values(raw, Path(label_path))
            if bad:
                kind = "label values outside the encoding" if ds.strict_values else "warning: unexpected label values"
                issues.append((kind, str(label_path), "values " + ", ".join(map(str, bad[:10]))))
            if image is not None and raw.shape != image.shape[:2]:
                issues.append(("size mismatch", str(label_path),
                               f"label {raw.shape[1]}x{raw.shape[0]}, image {Path(image_path).name} "
                               f"{image.shape[1]}x{image.shape[0]}"))
    return issues


def _detail(err: Exception, path) -> str:
    text = str(err).replace(f"corrupt or unreadable file: {path}", "").strip()
    return text.splitlines()[0] if text else ""


def _map(fn, jobs: list, datasets: dict, workers: int, desc: str):
    """``map(fn, jobs)`` over ``datasets`` with a progress bar, in forked workers for big trees."""
    _DATASETS.clear()
    _DATASETS.update(datasets)
    try:
        if workers > 1 and len(jobs) >= PARALLEL_FROM and sys.platform != "win32":
            with get_context("fork").Pool(workers) as pool:
                yield from prep.progress(pool.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc)
        else:
            yield from prep.progress(map(fn, jobs), total=len(jobs), desc=desc)
    finally:
        _DATASETS.clear()


def check(cfg: DictConfig) -> dict:
    opts = cfg.get("check", {}) or {}
    cls = dataset_class(cfg)
    splits = list(opts.get("splits") or cls.splits)
    optional = set(getattr(cls, "optional_splits", ()))
    root = cfg.data.root
    print(f"segbench data check: {cfg.data.name} at {root}")

    datasets, errors, notes = {}, [], []
    for split in splits:
        try:
            datasets[split] = build(cfg, split)
        except DatasetNotFoundError as err:
            if split in optional:
                notes.append(f"optional split '{split}' not present: {str(err).splitlines()[0]}")
            else:
                errors.append((split, err))
    if not datasets and errors:
        raise errors[0][1]  # nothing readable: the message names the path, tree and source

    print(f"  {'split':<12}{'found':>8}{'expected':>10}")
    count_problems = []
    for split in splits:
        if split in datasets:
            ds = datasets[split]
            expected = ds.expected_counts.get(split)
            flag = ""
            if expected is not None and len(ds) != expected:
                flag = "  (differs from the official count)"
                count_problems.append(split)
            print(f"  {split:<12}{len(ds):>8}{expected if expected is not None else '-':>10}{flag}")
        elif split not in optional:
            print(f"  {split:<12}{'-':>8}{cls.expected_counts.get(split, '-'):>10}  (cannot be listed)")

    problems: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, err in errors:
        problems[f"split '{split}' cannot be listed"].append((str(err).splitlines()[0], ""))
    seen, jobs, referenced = set(), [], set()
    for split, ds in datasets.items():
        for i, (image_path, label_path) in enumerate(ds.samples):
            key = (str(image_path), str(label_path), ds.sample_id(i))
            if label_path is not None:
                referenced.add(str(label_path))
            if key not in seen:
                seen.add(key)
                jobs.append((split, i, bool(opts.get("decode", True))))
    workers = int(opts.get("workers", 0) or 0)
    for issues in _map(_inspect, jobs, datasets, workers, desc="checking files"):
        for kind, path, detail in issues:
            problems[kind].append((path, detail))

    extra = set()
    for ds in datasets.values():
        if hasattr(ds, "label_files"):
            extra |= {str(p) for p in ds.label_files()} - referenced
    if extra:
        first = sorted(extra)[0]
        notes.append(f"{len(extra)} label file(s) not used by the checked splits (first: {first})")
    if count_problems:
        notes.append("counts differ from the official split for: " + ", ".join(count_problems)
                     + (" (a partial download or extraction?)" if not opts.get("strict_counts") else ""))

    limit = int(opts.get("max_listed", 20))
    failing = 0
    for kind, entries in problems.items():
        fatal = not kind.startswith("warning")
        failing += len(entries) if fatal else 0
        print(f"{kind}: {len(entries)}")
        for path, detail in entries[:limit]:
            print(f"  {path} {detail}".rstrip())
        if len(entries) > limit:
            print(f"  ... and {len(entries) - limit} more")
    for note in notes:
        print(f"note: {note}")
    if opts.get("strict_counts") and count_problems:
        failing += len(count_problems)
    total = len(jobs)
    if failing:
        print(f"FAILED: {failing} problem(s) in {total} samples")
        sys.stdout.flush()
        sys.exit(1)
    print(f"OK: {total} samples checked")
    return {"samples": total, "problems": 0}


# ---- prepare ------------------------------------------------------------------------------
def prepare_dataset(cfg: DictConfig):
    name = cfg.data.name
    preparer = prep.PREPARERS.get(name)
    root = Path(cfg.data.root).expanduser()
    if preparer is None:
        print(f"segbench data prepare: nothing to prepare for {name}; it is read as unpacked "
              f"(run `segbench data check data={name} data.root={root}` to verify the tree)")
        return None
    force = bool((cfg.get("prepare", {}) or {}).get("force", False))
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"{name}: dataset root does not exist: {root}\n"
            f"Expected layout under data.root:\n{dataset_class(cfg).layout.rstrip()}\n"
            f"Get the data from: {dataset_class(cfg).source}")
    return preparer(root, force=force)


# ---- stats --------------------------------------------------------------------------------
def _count(args):
    split, index = args
    ds = _DATASETS[split]
    label = ds.load_label(index) if hasattr(ds, "load_label") else ds.load(index)[1]
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
    workers = int(opts.get("workers", 0) or 0)
    jobs = [(split, i) for i in range(len(ds))]
    for result in _map(_count, jobs, {split: ds}, workers, desc=f"counting {split}"):
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
        prep.write_json(output, result)
    except OSError as err:
        raise SegbenchError(f"cannot write {output} ({err.strerror}); choose another file with stats.output=<path>") from None
    print(f"wrote {output}")
    print("train with these weights:  loss.class_weights="
          + "[" + ",".join(f"{w:.4f}" for w in weights) + "]")
    return result


def load_class_weights(path: str | Path) -> list[float]:
    """The ``class_weights`` list of a ``segbench data stats`` file (or of a bare JSON list)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SegbenchError(f"class-weight file not found: {path} (write it with `segbench data stats`)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SegbenchError(f"cannot read class weights from {path}: {err}") from None
    weights = data.get("class_weights") if isinstance(data, dict) else data
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
        raise SegbenchError(f"{path} holds no 'class_weights' list of numbers")
    return [float(w) for w in weights]
