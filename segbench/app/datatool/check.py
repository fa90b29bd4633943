"""``segbench data check data=<name> data.root=<dir>``: is the tree complete and readable?

Builds every split from ``data.root``, prints the counts next to the official ones, then opens
every image and label once: missing, unreadable and mis-sized files and label values outside
the dataset's encoding are listed by path, and label files no checked split uses are noted.
Exit status 1 if any problem is found.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import DictConfig

from segbench.data.walk import DATASETS, build, dataset_class, map_samples
from segbench.data.workers import num_workers
from segbench.errors import DatasetNotFoundError, SegbenchError


def check(cfg: DictConfig) -> dict:
    opts = cfg.get("check", {}) or {}
    cls = dataset_class(cfg)
    splits = list(opts.get("splits") or cls.splits)
    optional = set(cls.optional_splits)
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
    workers = num_workers(opts.get("workers", 0) or 0, len(jobs))
    for issues in map_samples(_inspect, jobs, datasets, workers, desc="checking files"):
        for kind, path, detail in issues:
            problems[kind].append((path, detail))

    extra = set()
    for ds in datasets.values():
        extra |= {str(p) for p in ds.label_files()} - referenced
    if extra:
        first = min(extra)
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


def _inspect(args) -> list[tuple[str, str, str]]:
    """Open one sample's files; return ``(kind, path, detail)`` for each problem found."""
    split, index, decode = args
    ds = DATASETS[split]
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
                               (f"label {raw.shape[1]}x{raw.shape[0]}, image {Path(image_path).name} "
                                f"{image.shape[1]}x{image.shape[0]}")))
    return issues


def _detail(err: Exception, path) -> str:
    text = str(err).replace(f"corrupt or unreadable file: {path}", "").strip()
    return text.splitlines()[0] if text else ""
