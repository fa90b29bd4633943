#!/usr/bin/env python
"""Reproduce every paper recipe whose data is present, then write REPORT.md (``make reproduce``).

    python scripts/reproduce.py [--out runs/reproduce] [--experiments a,b] [--launcher basic|joblib|slurm]
                                [--dry-run] [-- extra hydra overrides for every job]
    python scripts/reproduce.py --smoke [--out runs/reproduce-smoke]        (``make reproduce-smoke``)

The pipeline is the same in both modes:

1. every ``conf/experiment/*.yaml`` is composed; its train and validation splits are opened under
   ``$SEGBENCH_DATA`` (data.root's default); an experiment whose data is missing is skipped and
   listed with the reason;
2. ``segbench sweep experiment=<all available> hydra.sweep.dir=<out>/runs``: one run directory per
   experiment, failures recorded without stopping the others; rerunning the command skips the
   finished experiments and resumes interrupted ones;
3. staged recipes (``staged_from: <experiment>`` in the file: FCN-16s from FCN-32s, FCN-8s from
   FCN-16s, as the reference trains them) run after their previous stage, one sweep job each, with
   ``model.init_from=<the previous stage's job dir>``, in ``<out>/runs/stage_<experiment>``; a stage
   whose predecessor is not run, or failed, is skipped with the reason;
4. ``segbench report``: ``<out>/REPORT.md`` (published vs measured for every experiment, the runs,
   the deviations) and ``<out>/REPORT.png``.

``--smoke`` first writes the tiny datasets of ``segbench/data/fixtures.py`` (real on-disk layouts)
under ``<out>/data``, points ``SEGBENCH_DATA`` there and runs the sweep with ``smoke=true``: every
recipe for 2 iterations on CPU at 32x32 crops with its widths shrunk (ResNet-101 -> ResNet-50),
random initialisation. It checks the pipeline, not the papers; REPORT.md says so on top.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def experiments() -> list[str]:
    from segbench.app.configs import available

    return available("experiment")


def recipe(name: str):
    """Experiment ``name`` as ``segbench train experiment=<name>`` composes it (composed once per
    process: configs.experiment caches it)."""
    from segbench.app.configs import experiment

    return experiment(name)


def data_problem(cfg) -> str | None:
    """Why the composed experiment ``cfg`` cannot run here (its data is missing), or None."""
    from segbench.api import instantiate_unwrapped
    from segbench.errors import SegbenchError

    try:
        for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
            instantiate_unwrapped(cfg.data.dataset, split=split, transform=None)
    except SegbenchError as err:
        return str(err).splitlines()[0]
    except Exception as err:  # noqa: BLE001 -- any failure to open the data means "not runnable here"
        return f"{type(err).__name__}: {err}"
    return None


def write_class_weights(runnable: dict, out: Path, env: dict) -> None:
    """Recipes that train with ``segbench data stats`` output (``class_weights_file``: SegNet-Basic's
    median-frequency balancing) get it computed on their train split first, under ``<out>`` (the data
    folder may be read-only, and a smoke run's fixture weights must never reach a real run);
    ``$SEGBENCH_CLASS_WEIGHTS`` points their jobs at it."""
    files = {}
    for cfg in runnable.values():
        if cfg.get("class_weights_file") is not None:
            files[(cfg.data.name, cfg.data.train_split)] = out / "class_weights" / f"{cfg.data.name}_{cfg.data.train_split}.json"
    if len(files) > 1:
        raise SystemExit(f"reproduce: one $SEGBENCH_CLASS_WEIGHTS cannot serve {sorted(files)}")
    for (data, split), path in files.items():
        if not path.is_file():
            segbench("data", "stats", f"data={data}", f"stats.split={split}", f"stats.output={path}", env=env)
        env["SEGBENCH_CLASS_WEIGHTS"] = str(path)


def stage_order(runnable: list[str]) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """(experiments with no previous stage, [(staged, previous)] in dependency order, skipped staged ones);
    an experiment's ``staged_from`` names the one whose trained weights it starts from."""
    previous = {name: recipe(name).get("staged_from") for name in runnable}
    first = [n for n in runnable if not previous[n]]
    placed, staged, skipped = set(first), [], {}
    pending = [n for n in runnable if previous[n]]
    while pending:
        ready = [n for n in pending if previous[n] in placed]
        if not ready:
            for n in pending:
                skipped[n] = (f"staged after {previous[n]}, which is not run here: add it to --experiments, "
                              f"or train it alone with model.init_from=<run dir>")
            break
        for n in ready:
            staged.append((n, previous[n]))
            placed.add(n)
            pending.remove(n)
    return first, staged, skipped


def finished_job(runs: Path, experiment: str) -> Path | None:
    """The sweep job directory below ``runs`` that trained ``experiment`` to the end, if any."""
    from segbench.app.aggregate import rows

    for job in rows(runs):
        if f"experiment={experiment}" in job.overrides and job.done:
            return job.dir
    return None


def make_fixtures(root: Path) -> Path:
    """The package's tiny fixture datasets, one folder per data config name."""
    from segbench.data.fixtures import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    for name in ("voc", "voc_aug", "cityscapes", "camvid", "sunrgbd", "isbi"):
        marker = root / f".{name}.done"
        if not marker.exists():
            make_dataset(name, root)
            marker.write_text("ok\n")
    return root


def segbench(*args: str, env: dict) -> int:
    command = [sys.executable, "-m", "segbench", *args]
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command, cwd=REPO, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of every recipe on fixture data")
    parser.add_argument("--out", type=Path, default=None, help="output folder (runs/, REPORT.md)")
    parser.add_argument("--experiments", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--launcher", default=None, help="hydra launcher: basic (default) | joblib | slurm")
    parser.add_argument("--dry-run", action="store_true", help="only list what would run and what is skipped")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides for every job")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = (args.out or REPO / ("runs/reproduce-smoke" if args.smoke else "runs/reproduce")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "0")}
    if args.smoke:
        env["SEGBENCH_DATA"] = str(make_fixtures(out / "data"))
        env.setdefault("OMP_NUM_THREADS", "2")
        env["HF_HUB_OFFLINE"] = "1"
    os.environ.update({k: env[k] for k in ("SEGBENCH_DATA",) if k in env})

    wanted = [e for e in args.experiments.split(",") if e] or experiments()
    unknown = sorted(set(wanted) - set(experiments()))
    if unknown:
        print(f"reproduce: unknown experiment(s) {', '.join(unknown)}; available: {', '.join(experiments())}",
              file=sys.stderr)
        return 2
    recipes = {name: recipe(name) for name in wanted}
    reasons = {name: f"data missing: {why}" for name, cfg in recipes.items() if (why := data_problem(cfg))}
    runnable = {name: cfg for name, cfg in recipes.items() if name not in reasons}
    first, staged, unchained = stage_order(list(runnable))
    reasons.update(unchained)
    runnable = {name: cfg for name, cfg in runnable.items() if name not in unchained}
    print(f"data root: {env.get('SEGBENCH_DATA', 'data (default)')}")
    print(f"runnable ({len(runnable)}): {', '.join(runnable) or '-'}")
    for name, previous in staged:
        print(f"staged   {name}: from the {previous} run")
    for name, why in reasons.items():
        print(f"skipped  {name}: {why}")
    skipped_file = out / "skipped.json"
    skipped_file.write_text(json.dumps(reasons, indent=2))
    if args.dry_run:
        return 0

    runs = out / "runs"
    common = (["smoke=true"] if args.smoke else []) + ([f"hydra/launcher={args.launcher}"] if args.launcher else [])
    write_class_weights(runnable, out, env)
    status = 0
    if first:
        status = segbench("sweep", f"experiment={','.join(first)}", f"hydra.sweep.dir={runs}", *common,
                          *args.overrides, env=env)
    for name, previous in staged:  # one job each, after its previous stage (FCN 32s -> 16s -> 8s)
        source = finished_job(runs, previous)
        if source is None:
            reasons[name] = f"staged after {previous}, whose run did not finish"
            skipped_file.write_text(json.dumps(reasons, indent=2))
            print(f"skipped  {name}: {reasons[name]}")
            status = status or 1
            continue
        quoted = "'" + str(source).replace("\\", "\\\\").replace("'", "\\'") + "'"  # job dirs hold '=' and ','
        status = segbench("sweep", f"experiment={name}", f"model.init_from={quoted}", f"hydra.sweep.dir={runs}",
                          f"hydra.sweep.subdir=stage_{name}", *common, *args.overrides, env=env) or status
    runs.mkdir(exist_ok=True)
    title = "segbench reproduce-smoke (SMOKE: not paper numbers)" if args.smoke else "segbench reproduce"
    report = segbench("report", f"runs={out / 'runs'}", f"output={out / 'REPORT.md'}", "include_missing=true",
                      f"missing_reasons={out / 'skipped.json'}", f"title='{title}'", env=env)
    print(f"reproduce: {len(runnable)} experiment(s) run, {len(reasons)} skipped; report {out / 'REPORT.md'}; "
          f"{time.perf_counter() - start:.0f} s")
    return status or report


if __name__ == "__main__":
    sys.exit(main())
