"""``make device-check``: what every paper recipe costs on one GPU, in about ten minutes.

    python scripts/device_check.py [--out DIR] [--iters 30] [--recipes a,b] [--budget-s 540]
                                   [--camvid DIR --camvid-minutes 3]
    python scripts/device_check.py --dry-run        # CPU, tiny sizes: what the test suite runs

On one CUDA device, on synthetic data (random images and labels; no dataset, no weights):

1. every recipe of ``segbench/conf/experiment/`` trains ``--iters`` iterations (after 3 warm-up
   ones) at its own crop and global batch, in the precision and memory format ``segbench train``
   would use for it (``trainer.precision`` / ``channels_last`` resolved by engine/build.py):
   images/s, median step, peak ``torch.cuda.max_memory_allocated``; an OOM is a row, not a crash;
2. the multi-scale + flip evaluation cost factor of every recipe whose protocol has more than one
   view: ``predict`` under the recipe's protocol / the same protocol at one scale, no flip;
3. SyncBatchNorm on CUDA, single process: ``convert_sync_batchnorm`` + a training forward/backward
   (PyTorch falls back to per-process statistics with one process: this checks the conversion and
   the layers run on this device, and what they cost against plain BN);
4. ``torch.backends.cudnn.benchmark`` off / on (and bf16 + channels_last) for one recipe;
5. optionally SegNet-Basic trained on a CamVid copy for a fixed number of minutes
   (``--camvid``): ``segbench train experiment=segnet_basic_camvid``, then its val scores.

Writes ``device_check.md`` (one Markdown table per part) and ``device_check.json`` to ``--out``
(plus ``camvid_train.log`` with ``--camvid``). ``--budget-s`` stops starting new recipes once
spent, so the whole check stays under ten minutes on an H200; skipped rows say so.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from hydra.utils import instantiate

from segbench.app import configs
from segbench.engine import build, profile
from segbench.engine.device import autocast, resolve_precision
from segbench.engine.inference import predict
from segbench.engine.optim import build_optimizer
from segbench.engine.protocol import Protocol
from segbench.io import write_json, write_text

DRY_RECIPES = ["segnet_basic_camvid", "deeplabv1_vgg16_voc_aug"]  # small nets; the second has a flip protocol
CUDNN_RECIPE = "deeplabv3_r101_voc_aug"
DRY_CUDNN_RECIPE = "segnet_basic_camvid"  # the dry run checks the code path, cheaply (a small net with BN)
# Evaluation image sizes (H, W) of the datasets' val sets (MS+flip factor at the real size).
EVAL_SIZE = {"voc": (512, 512), "voc_aug": (512, 512), "cityscapes": (1024, 2048), "camvid": (360, 480),
             "sunrgbd": (480, 640), "isbi": (512, 512)}
WARMUP = 3  # cudnn.benchmark's algorithm search happens in the first steps


def compose(recipe: str, dry_run: bool, precision: str | None):
    cfg = configs.compose("train", [f"experiment={recipe}", "model.pretrained=false"])
    if dry_run:
        from segbench.sweep import smoke_config

        cfg = smoke_config(cfg)
    if precision:
        cfg.trainer.precision = precision
    if cfg.get("loss") is not None and "class_weights" in cfg.loss:
        cfg.loss.class_weights = None  # computed from the real labels (segbench data stats); cost is the same
    return cfg


def recipe_batch(cfg, device):
    """Random images and labels at the recipe's crop and global batch (profile.random_batch)."""
    crop = tuple(cfg.data.transforms.train.crop_size)
    return profile.random_batch(int(cfg.data.batch_size), crop, int(cfg.data.num_classes), device)


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def time_training(cfg, device, iters: int, channels_last=None, cudnn_benchmark=None) -> dict:
    """``iters`` timed steps of ``step.train_step`` (the trainer's own) after WARMUP ones."""
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    default = profile.default_setting(device, cfg.trainer)  # what `segbench train` resolves `auto` to
    setting = profile.Setting(default.precision, default.channels_last if channels_last is None else channels_last)
    torch.manual_seed(0)
    model = profile.prepare(build.build_model(cfg), setting, device)
    optimizer = build_optimizer(cfg, model)
    criterion = instantiate(cfg.loss).to(device)
    images, labels = recipe_batch(cfg, device)
    peak_reset(device)
    step = profile.make_train_step(model, criterion, optimizer, images, labels, setting)
    stats = profile.time_calls(step, device, WARMUP if device.type == "cuda" else 1, iters)
    return {"precision": setting.precision, "channels_last": setting.channels_last, "iterations": iters,
            "step_s": stats["median_s"], "first_step_s": stats["first_s"],
            "images_per_s": images.shape[0] / stats["median_s"], "peak_memory_bytes": peak_bytes(device)}


def recipe_rows(recipes, device, args, deadline) -> list[dict]:
    rows = []
    for name in recipes:
        cfg = compose(name, args.dry_run, args.precision)
        row = {"recipe": name, "model": str(cfg.model._target_).rsplit(".", 1)[-1],
               "crop": list(cfg.data.transforms.train.crop_size), "batch": int(cfg.data.batch_size),
               "precision": None, "channels_last": None, "iterations": 0, "images_per_s": None,
               "peak_memory_bytes": None, "status": "ok"}
        if time.monotonic() > deadline:
            rows.append({**row, "status": "skipped (time budget)"})
            continue
        try:
            row.update(time_training(cfg, device, args.iters))
        except torch.cuda.OutOfMemoryError:
            row["status"] = "OOM"
        finally:
            peak_reset(device)
        rows.append(row)
        print(f"  {name}: {row['status']}, {row.get('images_per_s') or 0:.2f} img/s", flush=True)
    return rows


def ms_flip_rows(recipes, device, args, deadline) -> list[dict]:
    """Evaluation cost of each recipe's protocol over the same protocol with one view."""
    rows = []
    for name in recipes:
        cfg = compose(name, args.dry_run, args.precision)
        if args.dry_run:  # the dry run's small recipes evaluate one view: give them two scales + flip
            cfg.eval_protocol.scales, cfg.eval_protocol.flip = [0.5, 1.0], True
        protocol = Protocol.from_config(cfg.eval_protocol)
        views = len(protocol.scales) * (2 if protocol.flip else 1)
        if views == 1 or time.monotonic() > deadline:
            continue
        single = Protocol.from_config({**_plain(cfg.eval_protocol), "scales": [1.0], "flip": False})
        precision = resolve_precision(device, str(cfg.trainer.precision))
        model = build.build_model(cfg).to(device).eval()
        size = tuple(cfg.data.transforms.train.crop_size) if args.dry_run else EVAL_SIZE.get(str(cfg.data.name), (512, 512))
        image = torch.randn(1, 3, *size, device=device)
        try:
            t_single = profile.time_calls(predict_call(model, image, single, precision), device, 1,
                                          args.eval_runs)["median_s"]
            t_full = profile.time_calls(predict_call(model, image, protocol, precision), device, 1,
                                        args.eval_runs)["median_s"]
            rows.append({"recipe": name, "image": list(size), "views": views, "protocol": protocol.describe(),
                         "single_s": t_single, "ms_flip_s": t_full, "factor": t_full / t_single})
        except torch.cuda.OutOfMemoryError:
            rows.append({"recipe": name, "image": list(size), "views": views, "factor": None, "status": "OOM"})
        finally:
            peak_reset(device)
    return rows


def predict_call(model, image, protocol: Protocol, precision: str):
    """One ``predict`` as evaluation runs it: under inference mode and the recipe's autocast."""
    def call():
        with torch.inference_mode(), autocast(image.device, precision):
            return predict(model, image, protocol=protocol)
    return call


def forward_backward(model, images):
    """A training forward/backward without a loss or optimiser (what SyncBN changes)."""
    def call():
        model(images)["out"].float().logsumexp(1).mean().backward()
    return call


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True))


def sync_bn_check(device, args) -> dict:
    """Conversion + a training forward/backward with SyncBatchNorm against plain BN (one process)."""
    from segbench.engine.distributed import convert_sync_batchnorm

    cfg = compose(DRY_CUDNN_RECIPE if args.dry_run else CUDNN_RECIPE, args.dry_run, args.precision)
    images, _ = recipe_batch(cfg, device)
    out = {}
    for kind in ("BatchNorm", "SyncBatchNorm"):
        torch.manual_seed(0)
        model = build.build_model(cfg)
        if kind == "SyncBatchNorm":
            model = convert_sync_batchnorm(model)
            out["converted_layers"] = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        model = model.to(device).train()
        step = forward_backward(model, images)
        out[f"{kind}_step_s"] = profile.time_calls(step, device, 1, max(1, args.iters // 10))["median_s"]
    out["ratio"] = out["SyncBatchNorm_step_s"] / out["BatchNorm_step_s"]
    return out


def cudnn_rows(device, args, deadline) -> list[dict]:
    """One recipe, cudnn.benchmark off / on, and bf16 + channels_last (the CUDA ``auto``)."""
    rows = []
    cfg = compose(DRY_CUDNN_RECIPE if args.dry_run else CUDNN_RECIPE, args.dry_run, args.precision)
    variants = [("cudnn.benchmark=false", None, False, None), ("cudnn.benchmark=true", None, True, None),
                ("bf16 + channels_last, benchmark=true", "bf16", True, True)]
    for label, precision, benchmark, channels_last in variants:
        if time.monotonic() > deadline:
            rows.append({"setting": label, "status": "skipped (time budget)"})
            continue
        if precision:
            cfg.trainer.precision = precision
        try:
            rows.append({"setting": label, **time_training(cfg, device, args.iters, channels_last, benchmark)})
        except torch.cuda.OutOfMemoryError:
            rows.append({"setting": label, "status": "OOM"})
        finally:
            peak_reset(device)
    torch.backends.cudnn.benchmark = True
    return rows


def camvid_run(root: Path, minutes: float, rate: float | None, out: Path) -> dict:
    """SegNet-Basic on a CamVid copy for ``minutes``: iterations from the synthetic rate measured above."""
    import tempfile

    cfg = compose("segnet_basic_camvid", False, None)
    per_s = (rate or 10.0) / int(cfg.data.batch_size)
    iters = max(1, int(minutes * 60 * per_s))
    run_dir = Path(tempfile.mkdtemp(prefix="segnet_basic_camvid_"))
    command = [sys.executable, "-m", "segbench", "train", "experiment=segnet_basic_camvid", f"data.root={root}",
               f"trainer.max_iters={iters}", f"trainer.val_interval={iters}", "trainer.progress=false",
               f"run_dir={run_dir}"]
    start = time.monotonic()
    with open(out / "camvid_train.log", "w") as log:
        status = subprocess.run(command, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    from segbench.record import validation_of

    validation = validation_of(run_dir)
    metrics = validation.scores if validation else {}
    return {"command": " ".join(command), "exit_status": status, "iterations": iters,
            "wall_s": time.monotonic() - start, "run_dir": str(run_dir),
            **{k: metrics.get(k) for k in ("mIoU", "mAcc", "aAcc")}}


def markdown(result: dict) -> str:
    from segbench.tables import markdown_table as table

    def mib(b):
        return "" if b is None else f"{b / 2**20:,.0f}"

    def fmt(x, spec=".2f"):
        return "" if x is None else format(x, spec)

    parts = [f"# segbench device check{' (DRY RUN: CPU, tiny sizes, not figures)' if result['dry_run'] else ''}",
             (f"{result['device']}; torch {result['torch']}; {result['iterations']} timed iterations after "
              f"{WARMUP} warm-up, synthetic data; total {result['total_s']:.0f} s\n"),
             "## Training, every recipe at its crop and global batch\n",
             table(["recipe", "model", "crop", "batch", "precision", "format", "img/s", "step s", "peak MiB", "status"],
                   [[r["recipe"], r["model"], "x".join(map(str, r["crop"])), r["batch"], r["precision"] or "",
                     "" if r["channels_last"] is None else ("channels_last" if r["channels_last"] else "NCHW"),
                     fmt(r["images_per_s"]), fmt(r.get("step_s"), ".3f"), mib(r["peak_memory_bytes"]), r["status"]]
                    for r in result["recipes"]]),
             "\n## Multi-scale + flip evaluation cost (one image)\n",
             table(["recipe", "image", "views", "1 view s", "all views s", "factor"],
                   [[r["recipe"], "x".join(map(str, r["image"])), r["views"], fmt(r.get("single_s"), ".3f"),
                     fmt(r.get("ms_flip_s"), ".3f"), fmt(r.get("factor"), ".1f")] for r in result["ms_flip"]]),
             "\n## SyncBatchNorm, one process (conversion + training forward/backward)\n",
             table(["converted layers", "BN step s", "SyncBN step s", "ratio"],
                   [[result["sync_bn"].get("converted_layers"), fmt(result["sync_bn"].get("BatchNorm_step_s"), ".3f"),
                     fmt(result["sync_bn"].get("SyncBatchNorm_step_s"), ".3f"), fmt(result["sync_bn"].get("ratio"))]]),
             f"\n## cudnn.benchmark and bf16 + channels_last ({result['cudnn_recipe']})\n",
             table(["setting", "precision", "format", "img/s", "peak MiB", "status"],
                   [[r["setting"], r.get("precision", ""), "channels_last" if r.get("channels_last") else "NCHW",
                     fmt(r.get("images_per_s")), mib(r.get("peak_memory_bytes")), r.get("status", "ok")]
                    for r in result["cudnn_benchmark"]])]
    if result.get("camvid"):
        c = result["camvid"]
        parts += ["\n## SegNet-Basic on CamVid (fixed time)\n",
                  table(["iterations", "wall s", "val mIoU", "global acc", "exit"],
                        [[c["iterations"], f"{c['wall_s']:.0f}", fmt(c.get("mIoU"), ".4f"), fmt(c.get("aAcc"), ".4f"),
                          c["exit_status"]]]), f"\n`{c['command']}`"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/device_check/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 iteration: checks the script")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--eval-runs", type=int, default=3)
    parser.add_argument("--recipes", default=None, help="comma-separated subset of conf/experiment")
    parser.add_argument("--precision", default=None, help="override every recipe's trainer.precision (e.g. auto)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no new measurement after this")
    parser.add_argument("--camvid", type=Path, default=None, help="a CamVid copy (SegNet layout) to train on")
    parser.add_argument("--camvid-minutes", type=float, default=3.0)
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        args.iters, args.eval_runs = 1, 1
    elif not torch.cuda.is_available():
        print("device_check: no CUDA device here; this check is for a GPU (use --dry-run to test the script)",
              file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    recipes = args.recipes.split(",") if args.recipes else (DRY_RECIPES if args.dry_run else configs.available("experiment"))
    out = args.out or REPO / "runs" / "device_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    print(f"device check on {profile.describe_device(device)}: {len(recipes)} recipes", flush=True)
    result = {"device": profile.describe_device(device), "torch": torch.__version__, "dry_run": args.dry_run,
              "iterations": args.iters, "cpu": profile.cpu_info(), "command": " ".join(sys.argv)}
    result["recipes"] = recipe_rows(recipes, device, args, deadline)
    result["ms_flip"] = ms_flip_rows(recipes, device, args, deadline)
    result["sync_bn"] = sync_bn_check(device, args)
    result["cudnn_recipe"] = DRY_CUDNN_RECIPE if args.dry_run else CUDNN_RECIPE
    result["cudnn_benchmark"] = cudnn_rows(device, args, deadline)
    if args.camvid and not args.dry_run:
        rate = next((r["images_per_s"] for r in result["recipes"] if r["recipe"] == "segnet_basic_camvid"), None)
        result["camvid"] = camvid_run(args.camvid, args.camvid_minutes, rate, out)
    result["total_s"] = time.monotonic() - start
    write_json(out / "device_check.json", result)
    text = markdown(result)
    write_text(out / "device_check.md", text)
    print(text)
    print(f"wrote {out / 'device_check.md'} and device_check.json")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
