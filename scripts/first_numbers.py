#!/usr/bin/env python
"""The first paper numbers on one GPU: SegNet-Basic on CamVid and U-Net on ISBI 2012, within a budget.

    python scripts/first_numbers.py --data DIR --out DIR [--runs DIR] [--budget-s 480] [--experiments a,b]
    python scripts/first_numbers.py --dry-run --out DIR     # CPU, tiny fixtures, through the parts

For each experiment, in order (SegNet-Basic first): the time its full recipe needs if that fits in
what is left (each later experiment keeping ``--min-share-s``), else an equal share of what is left:

1. its step time, measured: a few ``train_step`` calls on one real batch at the recipe's batch,
   crop and precision, and eval forwards at its val batch; from them the full recipe's time
   (``max_iters`` steps + its validations + the paper's evaluation), said up front;
2. ``segbench train experiment=<name>``, the recipe unchanged. When the full recipe does not fit
   the share, it still trains as the recipe says but is stopped (SIGINT: ``last.pt``, status
   ``interrupted``) at the end of the share, validating often enough for a curve of at least
   ``--curve-points`` points; its row is then a *curve point*, never the recipe's number;
3. ``segbench eval`` of the checkpoint the recipe selects (``best.pt``: SegNet §3.2 keeps the
   highest val global accuracy) on the paper's split: CamVid test (233 images, G / C / mIoU / BF);
   ISBI: the held-out training slices (the challenge's test labels are not public).

``first_numbers.json`` / ``.md`` in ``--out`` are rewritten (atomically) whenever something is
known: the plan, every validation point while training runs, the final row. A run cut off at any
moment leaves the rows so far. The paper values come from each recipe's ``paper:`` block, the
measured ones through ``segbench report``'s reading (:func:`segbench.app.report.measured_value`: the
paper's unit, whatever metrics the evaluation record holds); a metric it cannot read stays empty.

``--dry-run`` checks all of this on CPU in well under a minute: tiny fixture datasets
(``segbench/data/fixtures.py``) packed into parts (:mod:`segbench.parts`), received one load at a
time as the device commands would carry them, assembled, then both recipes shrunk as
``smoke=true`` shrinks them (``segbench/app/smoke.py`` SMOKE) with ``--dry-iters`` iterations.
The GPU procedure: docs/first-numbers.md.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXPERIMENTS = ("segnet_basic_camvid", "unet_isbi")
# The split each paper reports: CamVid test (SegNet Table 1); for ISBI the held-out training slices
# (data.dataset.val_slices), as the challenge's test labels are not public.
PAPER_SPLIT = {"segnet_basic_camvid": "test", "unet_isbi": "val"}
STARTUP_S = 30.0  # per experiment: two segbench processes starting, data loaders, cudnn's search
POLL_S = 2.0


# ---- the results file ------------------------------------------------------------------------------
class Results:
    """``first_numbers.json`` + ``.md``, rewritten atomically at every change."""

    def __init__(self, out: Path, header: dict):
        self.out, self.header, self.rows = out, header, {}

    def update(self, experiment: str, **fields) -> dict:
        row = self.rows.setdefault(experiment, {"experiment": experiment})
        row.update(fields)
        self.save()
        return row

    def save(self) -> None:
        from segbench.io import write_json, write_text

        write_json(self.out / "first_numbers.json", {**self.header, "rows": list(self.rows.values())})
        write_text(self.out / "first_numbers.md", markdown(self.header, list(self.rows.values())))


def markdown(header: dict, rows: list[dict]) -> str:
    from segbench.tables import markdown_table

    table = []
    for r in rows:
        done = f"{r.get('iterations', 0)} of {r.get('planned_iterations', '?')}"
        kind = ("recipe" if r.get("recipe_complete") else
                "curve point (not the recipe's number)" if r.get("iterations") else "")
        for m in r.get("metrics") or [{"metric": "", "paper": "", "measured": ""}]:
            table.append([r["experiment"], m["metric"], cell(m["paper"], "—"), cell(m["measured"]), r.get("split", ""),
                          done, kind, r.get("status", ""), f"{r.get('wall_s', 0):.0f}", r.get("device", ""),
                          r.get("precision", "")])
    parts = [f"# First paper numbers{' (DRY RUN: CPU, tiny fixtures, not figures)' if header['dry_run'] else ''}", "",
             f"`{header['command']}` — budget {header['budget_s']:.0f} s, started {header['started']}", "",
             markdown_table(["experiment", "metric", "paper", "measured", "split", "iterations", "kind", "status",
                             "wall s", "device", "precision"], table), ""]
    for r in rows:
        plan = r.get("plan") or {}
        parts += [f"## {r['experiment']}", "", plan.get("decision", ""), ""]
        if plan.get("step_tflop"):
            parts += [f"- measured step: {plan['step_s']:.3f} s for {plan['step_tflop']:.4g} TFLOP (conv/matmul, "
                      f"torch.utils.flop_counter) = {plan['achieved_tflop_per_s']:.3g} TFLOP/s on {r.get('device')}"]
        parts += [f"- {name}: `{command}`" for name, command in (r.get("commands") or {}).items()]
        if r.get("note"):
            parts += [f"- {r['note']}"]
        if r.get("curve"):
            keys = [k for k in r["curve"][-1] if k not in ("iteration", "wall_s")]
            parts += ["", "Validation curve (val split, during training):", "",
                      markdown_table(["iteration", "wall s", *keys],
                                     [[c["iteration"], f"{c['wall_s']:.0f}", *(cell(c.get(k)) for k in keys)]
                                      for c in r["curve"]])]
        parts.append("")
    return "\n".join(parts)


def cell(value, absent: str = "n/a") -> str:
    """Percentages with two decimals; fractions (ISBI errors) with four significant digits."""
    if value is None or value == "":
        return absent if value is None else ""
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


# ---- the paper's numbers and ours ----------------------------------------------------------------
def paper_metrics(cfg) -> dict:
    """``{metric: published value}`` from the recipe's ``paper:`` block (headline first, then ``also``)."""
    paper = cfg.get("paper") or {}
    return {str(paper.get("metric", "mIoU")): paper.get("value"), **dict(paper.get("also") or {})}


def measured(evaluation, published: dict) -> list[dict]:
    """Paper vs measured for every metric the paper gives, plus mIoU, in the paper's unit."""
    from segbench.app.report import measured_value

    names = list(published) + ([] if "mIoU" in published else ["mIoU"])
    return [{"metric": m, "paper": published.get(m), "measured": measured_value(evaluation, m)} for m in names]


# ---- step 1: the step time, and what the recipe costs -------------------------------------------------
def probe(cfg, steps: int) -> dict:
    """Median time of ``steps`` trainer steps on one real training batch (the device-side
    normalisation included; data loading not: the loader's workers run beside the step and make
    U-Net's weight maps), and
    of one prediction of a val batch under the recipe's protocol (BF scoring not included), on the
    device and in the precision ``segbench train`` resolves for this recipe."""
    import torch
    from torch.utils.data import default_collate

    from segbench.data.normalization import Normalization
    from segbench.engine import build, measure
    from segbench.engine.device import autocast, resolve_device
    from segbench.engine.inference import predict
    from segbench.engine.optim import build_optimizer
    from segbench.engine.protocol import Protocol
    from segbench.trust import instantiate_unwrapped

    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.trainer.get("cudnn_benchmark", True))
    setting = measure.default_setting(device, cfg.trainer)
    train_set = build.build_dataset(cfg, cfg.data.train_split, train=True)
    batch = default_collate([train_set[i % len(train_set)] for i in range(int(cfg.data.batch_size))])
    torch.manual_seed(0)
    model = measure.prepare(build.build_model(cfg), setting, device)
    criterion = instantiate_unwrapped(cfg.loss).to(device)
    optimizer = build_optimizer(cfg, model)
    images, labels = batch["image"].to(device), batch["label"].to(device)
    normalization = Normalization.from_data_config(cfg.data)
    step = measure.make_train_step(model, criterion, optimizer, images, labels, setting, normalization)
    train = measure.time_calls(step, device, 2 if device.type == "cuda" else 1, steps)
    val_set = build.build_dataset(cfg, cfg.data.val_split, train=False)
    val = default_collate([val_set[i % len(val_set)] for i in range(int(cfg.data.val_batch_size))])
    val_images = normalization(val["image"].to(device))
    if setting.channels_last:
        val_images = val_images.contiguous(memory_format=torch.channels_last)
    protocol = Protocol.from_config(cfg.eval_protocol)

    def forward():  # as the evaluator predicts: the recipe's protocol (U-Net: the mirror-padded slice)
        with torch.inference_mode(), autocast(device, setting.precision):
            return predict(model.eval(), val_images, protocol=protocol)

    forward_s = measure.time_calls(forward, device, 1, steps)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # the work of one step (conv/matmul FLOPs, counted on the meta device): what rate the step achieved
    flops, _ = measure.flops_per_image(lambda: build.build_model(cfg), tuple(images.shape[-2:]), train=True)
    step_tflop = flops * images.shape[0] / 1e12
    return {"device": measure.describe_device(device), "precision": setting.precision, "step_s": train["median_s"],
            "first_step_s": train["first_s"], "eval_batch_s": forward_s["median_s"], "step_tflop": step_tflop,
            "achieved_tflop_per_s": step_tflop / train["median_s"]}


def eval_batches(cfg, split: str) -> int:
    from segbench.engine import build

    return math.ceil(len(build.build_dataset(cfg, split, train=False)) / int(cfg.data.val_batch_size))


def plan(trainer, timing: dict, share_s: float, val_batches: int, eval_batches: int, curve_points: int) -> dict:
    """Whether the full recipe (``trainer``: its max_iters, val_interval) fits ``share_s``, from the
    measured step and eval-batch times; if not, how many iterations do, and the validation interval
    that gives the curve its points."""
    max_iters, val_interval = int(trainer.max_iters), int(trainer.val_interval)
    per_val, final_eval = val_batches * timing["eval_batch_s"], eval_batches * timing["eval_batch_s"]
    full_s = max_iters * timing["step_s"] + (max_iters // val_interval) * per_val + final_eval + STARTUP_S
    fits = full_s <= share_s
    out = {**timing, "full_recipe_s": round(full_s, 1), "budget_s": round(share_s, 1),
           "max_iters": max_iters, "val_interval": val_interval, "final_eval_s": round(final_eval, 1)}
    if fits:
        out["decision"] = (f"The full recipe fits: {max_iters} iterations x {timing['step_s']:.3f} s + validations "
                           f"+ evaluation ~ {full_s:.0f} s of {share_s:.0f} s.")
        return out
    room = max(0.0, share_s - final_eval - STARTUP_S - curve_points * per_val)
    fit_iters = max(1, min(max_iters, int(room / timing["step_s"])))
    out["val_interval"] = max(1, min(val_interval, fit_iters // curve_points or 1))
    out["fit_iters"] = fit_iters
    out["decision"] = (f"The full recipe does NOT fit: {max_iters} iterations x {timing['step_s']:.3f} s/step "
                       f"~ {full_s:.0f} s (validations and evaluation included) > {share_s:.0f} s. Training the "
                       f"recipe unchanged until the time is up (~{fit_iters} iterations), validating every "
                       f"{out['val_interval']}: the row is a point of the learning curve, not the recipe's number.")
    return out


# ---- step 2: train, watching the record ------------------------------------------------------------
def curve_point(validation, started: float, published: dict) -> dict:
    point = {"iteration": validation.iteration, "wall_s": round(time.monotonic() - started, 1)}
    point.update({m["metric"]: m["measured"] for m in measured(validation, published)})
    return point


def train(command: list[str], run_dir: Path, deadline: float, env: dict, on_point, log: Path) -> int:
    """Run ``command`` (``segbench train``) until it ends or ``deadline``; each new validation in its
    run.json goes to ``on_point``. At the deadline it is asked to stop (SIGINT, once its training
    loop runs, so the signal finds the trainer's handler: ``last.pt`` + status ``interrupted``)."""
    from segbench.errors import SegbenchError
    from segbench.record import RunRecord

    seen, stopping = None, False
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            ended = proc.poll() is not None
            try:
                record = RunRecord.load(run_dir)
            except SegbenchError:  # not written yet
                record = None
            validation = record.training.validation if record and record.training else None
            if validation is not None and validation.iteration != seen:
                seen = validation.iteration
                on_point(validation)
            if ended:
                return proc.returncode
            if not stopping and time.monotonic() >= deadline and record and record.status == "running":
                proc.send_signal(signal.SIGINT)
                stopping = time.monotonic()
            if stopping and time.monotonic() - stopping > 300:  # a stuck stop: the row says so
                proc.kill()
            time.sleep(POLL_S)


# ---- step 3: the paper's evaluation -----------------------------------------------------------------
def evaluate(run_dir: Path, split: str, env: dict, log: Path) -> tuple[int, object, list[str]]:
    """``segbench eval`` of the selected checkpoint on ``split``; (exit status, the evaluation, command)."""
    from segbench.record import RunRecord

    command = [sys.executable, "-m", "segbench", "eval", f"run={run_dir}", f"split={split}", "progress=false"]
    with open(log, "w") as out:
        status = subprocess.call(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    found = [e for e in RunRecord.load(run_dir).evaluations if e.split == split and e.source != "train"] \
        if (run_dir / "run.json").is_file() else []
    return status, (found[-1] if found else None), command


# ---- one experiment ---------------------------------------------------------------------------------------
def run_experiment(name: str, overrides: list[str], left_s: float, after: int, results: Results, args,
                   env: dict) -> None:
    """Measure, plan, train, evaluate ``name`` within ``left_s`` seconds, ``after`` more experiments
    to come: the full recipe if it fits, leaving each of those ``--min-share-s``; else the curve in
    an equal share of the time left."""
    from segbench.app import configs
    from segbench.record import RunRecord

    started = time.monotonic()
    cfg = configs.compose("train", [f"experiment={name}", *overrides])
    published, split = paper_metrics(cfg), PAPER_SPLIT.get(name, str(cfg.data.val_split))
    planned = int(cfg.trainer.max_iters)
    results.update(name, status="measuring the step time", split=split, planned_iterations=planned, iterations=0,
                   recipe_complete=False, metrics=measured(None, published), curve=[], wall_s=0.0)
    timing = probe(cfg, args.timing_steps)
    available = left_s - (time.monotonic() - started)
    batches = eval_batches(cfg, cfg.data.val_split), eval_batches(cfg, split)
    decision = plan(cfg.trainer, timing, available - after * args.min_share_s, *batches, args.curve_points)
    if "fit_iters" in decision:  # not even with the others at their minimum: the curve, in an equal share
        decision = plan(cfg.trainer, timing, available / (after + 1), *batches, args.curve_points)
    deadline = time.monotonic() + decision["budget_s"] - (decision["final_eval_s"] + STARTUP_S / 2)
    print(f"[{name}] {decision['decision']}", flush=True)
    results.update(name, status="training", plan=decision, device=timing["device"], precision=timing["precision"],
                   wall_s=time.monotonic() - started)

    run_dir = args.runs / name
    extra = [] if decision["val_interval"] == int(cfg.trainer.val_interval) else \
        [f"trainer.val_interval={decision['val_interval']}"]  # more curve points; training itself unchanged
    command = [sys.executable, "-m", "segbench", "train", f"experiment={name}", *overrides, *extra,
               f"run_dir={run_dir}", "trainer.progress=false"]
    commands = {"train": shlex.join(command)}
    results.update(name, commands=commands)
    curve = []

    def on_point(validation):
        curve.append(curve_point(validation, started, published))
        results.update(name, curve=curve, iterations=validation.iteration, wall_s=time.monotonic() - started)
        print(f"[{name}] val at {validation.iteration}: {curve[-1]}", flush=True)

    status = train(command, run_dir, deadline, env, on_point, args.out / f"{name}.train.log")
    record = RunRecord.load(run_dir) if (run_dir / "run.json").is_file() else None
    done = record.iteration if record else 0
    complete = bool(record and record.status == "finished" and done == planned)
    results.update(name, iterations=done, status="evaluating" if record else f"training failed (exit {status})",
                   recipe_complete=complete, wall_s=time.monotonic() - started,
                   precision=(record.training.summary.precision if record and record.training else None)
                   or timing["precision"])
    if not (run_dir / "last.pt").is_file():
        results.update(name, status=f"no checkpoint (training exit {status}; see {name}.train.log)")
        return
    eval_status, evaluation, eval_command = evaluate(run_dir, split, env, args.out / f"{name}.eval.log")
    commands["eval"] = shlex.join(eval_command)
    how = ("the full recipe" if complete else
           f"stopped at {done} of {planned} iterations: a learning-curve point, not the recipe's number")
    absent = [m["metric"] for m in measured(evaluation, published) if m["measured"] is None]
    note = (f"the evaluation record holds no {', '.join(absent)} (this segbench does not measure them yet)"
            if evaluation and absent else "")
    if evaluation:  # which checkpoint the number is of (best.pt: the recipe's selection on val)
        results.update(name, evaluated={"checkpoint": Path(evaluation.checkpoint).name,
                                        "iteration": evaluation.iteration, "protocol": evaluation.protocol_name})
    results.update(name, metrics=measured(evaluation, published), commands=commands, wall_s=time.monotonic() - started,
                   status=(f"done: {how}" if eval_status == 0 and evaluation else
                           f"evaluation failed (exit {eval_status}; see {name}.eval.log)"), note=note)


# ---- the dry run: fixtures through the parts, then tiny recipes -------------------------------------------
# model.base_channels=4: the smoke: block of both EXPERIMENTS' models (conf/model/segnet_basic.yaml, unet.yaml)
SMOKE_OVERRIDES = ["data.batch_size={batch_size}", "data.val_batch_size=1", "data.num_workers=0",
                   "data.transforms.train.crop_size=[{crop[0]},{crop[1]}]", "model.base_channels=4",
                   "trainer.device=cpu", "trainer.precision=fp32", "trainer.channels_last=false", "trainer.num_vis=1",
                   "+smoke=true"]


def dry_overrides(iterations: int) -> list[str]:
    """``smoke=true``'s shrinking (segbench/app/smoke.py SMOKE) as ``segbench train`` overrides; two
    validations (a curve of two points)."""
    from segbench.app.smoke import SMOKE

    return [o.format(**SMOKE) for o in SMOKE_OVERRIDES] + [f"trainer.max_iters={iterations}",
                                                          f"trainer.val_interval={max(1, iterations // 2)}"]


DRY_PART_BYTES, DRY_LOAD_BYTES = 192 * 2**10, 448 * 2**10  # a few parts and loads from ~0.5 MiB of fixtures


def dry_data(out: Path) -> Path:
    """The fixtures of CamVid and ISBI, packed into parts of 192 KiB, carried load by load (as the
    device commands carry them: each load in a folder of its own) into a store, then assembled."""
    from segbench import parts
    from segbench.data.fixtures import make_dataset

    packed, store, data = out / "dry" / "packed", out / "dry" / "store", out / "dry" / "data"
    for folder in (out / "dry" / "source", packed, store, data):
        shutil.rmtree(folder, ignore_errors=True)
    for name in ("camvid", "isbi"):
        parts.pack(make_dataset(name, out / "dry" / "source"), packed, name, max_bytes=DRY_PART_BYTES)
    for k, load in enumerate(parts.loads([packed / "camvid", packed / "isbi"], budget=DRY_LOAD_BYTES), 1):
        carried = out / "dry" / f"command{k}"
        shutil.rmtree(carried, ignore_errors=True)
        for path in map(Path, load):
            (carried / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, carried / path.parent.name / path.name)
        for folder in sorted(carried.iterdir()):
            print(f"command {k}: {parts.receive(folder, store)}", flush=True)
    for name in ("camvid", "isbi"):
        parts.assemble(name, store, data / name)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="first_numbers.json/.md, runs/, logs")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default <out>/runs; on a "
                        "device machine keep them out of $OUT: checkpoints are not results)")
    parser.add_argument("--data", type=Path, default=None, help="folder holding camvid/ and isbi/ "
                        "(default $SEGBENCH_DATA)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall seconds for everything")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
    parser.add_argument("--timing-steps", type=int, default=None,
                        help="timed steps per recipe after warm-up (default 5; dry run 1)")
    parser.add_argument("--curve-points", type=int, default=4, help="validations at least, when truncated")
    parser.add_argument("--min-share-s", type=float, default=120.0,
                        help="what a full recipe leaves each later experiment at least")
    parser.add_argument("--dry-run", action="store_true", help="CPU, fixtures through the parts, tiny recipes")
    parser.add_argument("--dry-iters", type=int, default=2, help="iterations of the dry run's tiny recipes")
    args = parser.parse_args(argv)

    start = time.monotonic()
    args.timing_steps = args.timing_steps or (1 if args.dry_run else 5)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs = (args.runs or args.out / "runs").resolve()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "0")}
    overrides = dry_overrides(args.dry_iters) if args.dry_run else []
    data = dry_data(args.out) if args.dry_run else (args.data or Path(os.environ.get("SEGBENCH_DATA", "data")))
    env["SEGBENCH_DATA"] = os.environ["SEGBENCH_DATA"] = str(Path(data).resolve())
    import segbench.cli  # noqa: F401  (registers the ${class_weights:...} resolver the recipes use)
    from segbench.app import configs

    names = [e for e in args.experiments.split(",") if e]
    unknown = sorted(set(names) - set(configs.available("experiment")))
    if unknown:
        print(f"first_numbers: unknown experiment(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    taken = [str(args.runs / n) for n in names if (args.runs / n).exists() and any((args.runs / n).iterdir())]
    if taken:  # an earlier run's record would be read as this one's
        print(f"first_numbers: {', '.join(taken)} already hold runs; choose another --out / --runs", file=sys.stderr)
        return 2
    results = Results(args.out, {"command": shlex.join(["python", "scripts/first_numbers.py",
                                                         *(argv if argv is not None else sys.argv[1:])]),
                                 "dry_run": args.dry_run, "budget_s": args.budget_s, "data": str(data),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    sys.path.insert(0, str(REPO / "scripts"))
    from reproduce import write_class_weights  # SegNet-Basic's median-frequency weights, as make reproduce

    write_class_weights({n: configs.compose("train", [f"experiment={n}", *overrides]) for n in names},
                        args.out, env)
    if "SEGBENCH_CLASS_WEIGHTS" in env:  # the probe composes and builds the recipe in this process
        os.environ["SEGBENCH_CLASS_WEIGHTS"] = env["SEGBENCH_CLASS_WEIGHTS"]
    for k, name in enumerate(names):
        try:
            run_experiment(name, overrides, args.budget_s - (time.monotonic() - start), len(names) - k - 1,
                           results, args, env)
        except Exception as err:  # noqa: BLE001 -- one experiment's failure is its row; the next one runs
            results.update(name, status=f"failed: {type(err).__name__}: {err}")
            print(f"[{name}] failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    print((args.out / "first_numbers.md").read_text())
    print(f"first_numbers: {time.monotonic() - start:.0f} s; {args.out / 'first_numbers.json'}")
    return 0 if all(r.get("status", "").startswith("done") for r in results.rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
