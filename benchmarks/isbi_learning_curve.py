"""U-Net (``experiment=unet_isbi``) on the real ISBI 2012 training volume for a fixed wall budget:
the learning curve of the paper recipe, truncated, with the challenge's warping / Rand / pixel
errors on the held-out training slices at every validation, next to U-Net's Table 1.

    python benchmarks/isbi_learning_curve.py --root ../shared/data/isbi --minutes 12 \
        --val-every 20 --out benchmarks/results/isbi

It runs ``segbench train experiment=unet_isbi`` itself, the recipe unchanged (batch 1, 572-px
tiles with context, elastic deformation, weight map, SGD momentum 0.99, constant lr, fp32) except
``trainer.val_interval`` / ``trainer.checkpoint_interval`` = ``--val-every``, in ``--run-dir``
(default ``runs/isbi_learning_curve``: checkpoints stay out of git), and stops it with SIGINT once ``--minutes`` of wall time are spent (the trainer finishes the step,
writes last.pt and exits 130). Every validation is read back from the run's TensorBoard events;
where the stop came after the last validation, ``segbench eval which=last.pt`` scores the stopped
weights too (its wall time is not counted).
Run the same command again to *extend* the curve: it resumes the run (``trainer.resume=<run>``)
for another ``--minutes``; the table covers every session. ``--table`` only rewrites curve.md.

The constant learning rate (the recipe's: the paper states none) means a truncated run is the
start of the full one, not a shorter schedule. Wall time counts everything the run does
(validation and its ISBI scoring included). The GPU estimate divides the full recipe's FLOPs
(counted by ``segbench.engine.measure``) by the rate this CPU achieved; a GPU's own rate comes
from ``python scripts/device_check.py --recipes unet_isbi`` on one.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from camvid_learning_curve import compose_train  # noqa: E402  (the config `segbench train` would run)
from segbench.io import write_json  # noqa: E402
from segbench.metrics.isbi import METRICS  # noqa: E402
from segbench.tables import markdown_table  # noqa: E402

EXPERIMENT = "unet_isbi"
STOP_GRACE_S = 900  # after SIGINT: the step (or a validation) in flight finishes, then last.pt


def train_command(args, run_dir: Path) -> list[str]:
    """``segbench train`` of the recipe; a run dir that holds last.pt is resumed (extended)."""
    cmd = [sys.executable, "-m", "segbench", "train", f"experiment={EXPERIMENT}", f"data.root={args.root}",
           f"trainer.val_interval={args.val_every}", f"trainer.checkpoint_interval={args.val_every}",
           f"trainer.log_interval={args.val_every}", "trainer.progress=false", *args.override]
    if (run_dir / "last.pt").is_file():
        return cmd + [f"trainer.resume={run_dir}"]
    return cmd + [f"run_dir={run_dir}"]


def train_for(cmd: list[str], minutes: float, log: Path) -> dict:
    """Run ``cmd`` for ``minutes`` of wall time, then SIGINT; the session's start / end / exit code."""
    start, load_start = time.time(), os.getloadavg()[0]
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=60 * minutes)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=STOP_GRACE_S)
    return {"start": start, "end": time.time(), "rc": rc, "minutes": minutes, "load_start": load_start,
            "load_end": os.getloadavg()[0]}


def score_stop(run_dir: Path, log: Path, validated: set[int]) -> dict | None:
    """``segbench eval`` of last.pt on the held-out slices when no validation scored it yet:
    ``{"iteration", "scores"}`` (from run.json), or None."""
    from segbench.record import RunRecord

    iteration = RunRecord.load(run_dir).iteration
    if not iteration or iteration in validated:
        return None
    cmd = [sys.executable, "-m", "segbench", "eval", f"run={run_dir}", "which=last.pt", "split=val", "progress=false"]
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        if subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            return None
    scored = [e for e in RunRecord.load(run_dir).evaluations if e.iteration == iteration and e.split == "val"]
    return {"iteration": iteration, "scores": scored[-1].scores} if scored else None


def scalars(tb_dir: Path) -> dict[str, list]:
    """Every scalar of the run's TensorBoard events: ``{tag: [(step, wall_time, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.wall_time, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def elapsed(wall_time: float, sessions: list[dict]) -> float:
    """Seconds of run time up to ``wall_time``: earlier sessions whole, this one up to it."""
    total = 0.0
    for s in sessions:
        if wall_time <= s["end"]:
            return total + max(0.0, wall_time - s["start"])
        total += s["end"] - s["start"]
    return total


def curve(tags: dict[str, list], sessions: list[dict]) -> list[dict]:
    """One row per validation (TensorBoard) and per stopped-weights eval (``session["stop"]``)."""
    loss = tags.get("train/loss", [])
    points = [(step, elapsed(wall, sessions), {"mIoU": miou, **{m: _at(tags, f"val/{m}", step) for m in METRICS}},
               "validation") for step, wall, miou in tags.get("val/mIoU", [])]
    done = 0.0
    for session in sessions:
        done += session["end"] - session["start"]
        if session.get("stop"):
            points.append((session["stop"]["iteration"], done, session["stop"]["scores"], "eval of last.pt"))
    rows = []
    for step, seconds, scores, source in sorted(points, key=lambda p: p[0]):
        before = [v for s, _, v in loss if s <= step]
        rows.append({"iteration": step, "wall_min": round(seconds / 60, 1), "mIoU": round(100 * scores["mIoU"], 2),
                     **{m: scores.get(m) for m in METRICS}, "loss": round(before[-1], 4) if before else None,
                     "scored by": source})
    return rows


def _at(tags: dict[str, list], tag: str, step: int):
    return next((v for s, _, v in tags.get(tag, []) if s == step), None)


def step_range(tags: dict[str, list]) -> list[float] | None:
    """Fastest and slowest logged seconds per step: how much the machine's load moved it."""
    steps = [1 / v for _, _, v in tags.get("train/images_per_s", []) if v > 0]
    return [min(steps), max(steps)] if steps else None


def step_seconds(tags: dict[str, list], run_dir: Path) -> float | None:
    """Median seconds per training step (batch 1) over the logged reports; without a report yet,
    the run's training time / iterations."""
    from segbench.record import RunRecord

    rates = [v for _, _, v in tags.get("train/images_per_s", []) if v > 0]
    if rates:
        return statistics.median(1 / r for r in rates)
    record = RunRecord.load(run_dir)
    seconds = record.training.summary.train_time_s
    return seconds / record.iteration if seconds and record.iteration else None


def flops_per_step(overrides: list[str]) -> int:
    """FLOPs of one training step of the recipe (forward + backward, one 572x572 tile)."""
    from segbench.engine import build, measure

    cfg = compose_train([f"experiment={EXPERIMENT}", *overrides])
    return measure.flops_per_image(lambda: build.build_model(cfg), (572, 572), train=True)[0]


def table(saved: dict) -> str:
    cfg = compose_train([f"experiment={EXPERIMENT}"])
    paper = cfg.paper
    total_iters = int(cfg.trainer.max_iters)
    rows = [[r["iteration"], r["wall_min"], r["mIoU"]] + [_fmt(r[m]) for m in METRICS] + [r["loss"], r["scored by"]]
            for r in saved["curve"]]
    rows.append(["paper (Table 1)", "", ""] + [_fmt(paper.also.warping_error), _fmt(paper.also.rand_error),
                                             _fmt(paper.value), "", "challenge server, test volume"])
    done = saved["curve"][-1]["iteration"] if saved["curve"] else 0
    loads = ", ".join(f"{s['load_start']:.1f} / {s['load_end']:.1f}" for s in saved["sessions"])
    step = saved.get("step_s")
    flops = saved["flops_per_step"]
    lines = [f"`{saved['command']}`", "", saved["machine"], "",
             f"Sessions: {len(saved['sessions'])}, {sum(s['minutes'] for s in saved['sessions']):g} min of wall "
             f"budget; load average (1 min) at the start / end of each: {loads} (2 cores shared with "
             f"other jobs).", "",
             f"Iterations done: **{done}** of the recipe's {total_iters:,} (the paper states no iteration "
             f"count: \"10 hours on a 6 GB Titan\"). Errors are on the held-out training slices "
             f"(`data.dataset.val_slices` 27-29, whole slices), not the challenge's test volume; the paper "
             f"averages 7 rotated inputs, this is one prediction.", "",
             markdown_table(["iteration", "wall min", "val mIoU"] + list(METRICS) + ["train loss", "scored by"], rows,
                            fmt=str)]
    if step:
        rate = flops / step
        full = flops * total_iters
        spread = saved.get("step_range_s")
        spread = f", {spread[0]:.0f}-{spread[1]:.0f} s over the logged reports as the load changed" if spread else ""
        lines += ["", f"Measured step: {step:.2f} s (median, batch 1, fp32{spread}) = {rate / 1e9:.0f} GFLOP/s "
                      f"achieved ({flops / 1e9:.0f} GFLOP per step, counted). The full recipe: {total_iters:,} steps = "
                      f"{full / 1e15:.1f} PFLOP = {total_iters * step / 3600:.0f} h at this median step; on a GPU, "
                      f"{full / 1e15:.1f} PFLOP / the rate it achieves (one hour needs {full / 3600 / 1e12:.1f} "
                      f"TFLOP/s achieved; measure it: `python scripts/device_check.py --recipes {EXPERIMENT}`)."]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.7f}" if value < 0.01 else f"{value:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "isbi"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "isbi"), help="curve.json / .md, train.log")
    p.add_argument("--run-dir", default=str(REPO / "runs" / "isbi_learning_curve"), help="the training run")
    p.add_argument("--minutes", type=float, default=12.0, help="wall budget of this session")
    p.add_argument("--val-every", type=int, default=20, help="iterations between validations")
    p.add_argument("--table", action="store_true", help="only rewrite curve.md from curve.json")
    p.add_argument("override", nargs="*", help="more `segbench train` overrides (e.g. data.num_workers=1)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    saved_path = out / "curve.json"
    if args.table:
        (out / "curve.md").write_text(table(json.loads(saved_path.read_text())))
        print((out / "curve.md").read_text())
        return 0
    if not (Path(args.root) / "train").is_dir() and not (Path(args.root) / "train-volume.tif").is_file():
        print(f"ISBI 2012 not found at {args.root}; pass --root", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    args.root = str(Path(args.root).resolve())
    run_dir = Path(args.run_dir).resolve()
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {"sessions": []}
    if saved["sessions"] and not (run_dir / "last.pt").is_file():
        print(f"{saved_path} lists sessions but {run_dir} has no last.pt to extend", file=sys.stderr)
        return 2
    from segbench.engine import measure
    import torch

    saved["command"] = "python benchmarks/isbi_learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    saved["machine"] = measure.describe_device(torch.device("cpu"))
    saved.setdefault("flops_per_step", flops_per_step(args.override))
    session = train_for(train_command(args, run_dir), args.minutes, out / "train.log")
    saved["sessions"].append(session)
    tags = scalars(run_dir / "tb")
    session["stop"] = score_stop(run_dir, out / "train.log", {step for step, _, _ in tags.get("val/mIoU", [])})
    saved["curve"] = curve(tags, saved["sessions"])
    saved["step_s"] = step_seconds(tags, run_dir)
    saved["step_range_s"] = step_range(tags)
    write_json(saved_path, saved)
    (out / "curve.md").write_text(table(saved))
    print((out / "curve.md").read_text())
    return 0 if session["rc"] in (0, 130) else 1


if __name__ == "__main__":
    sys.exit(main())
