"""``make device-check``: what segbench costs on one GPU machine, in about ten minutes.

    python scripts/device_check.py [--out DIR] [--iters 10] [--recipes a,b] [--budget-s 540]
                                   [--camvid DIR --camvid-minutes 3]
    python scripts/device_check.py --dry-run        # CPU, tiny sizes: what the test suite runs

Runs from the repository root with the machine's own python (torch, torchvision, timm, scipy,
opencv, tensorboard): the pure-Python packages a bare GPU machine lacks (hydra-core, omegaconf,
albumentations and theirs) travel as wheels, ``make device-check-wheels`` (docs/performance.md).
On one CUDA device, on synthetic data (no dataset, no weights), each part a table:

1. recipes: every recipe of ``segbench/conf/experiment/`` trains ``--iters`` steps (after 3
   warm-up ones) at its own crop and per-device batch, as ``segbench train`` would run it (its
   precision: fp32 with cuDNN's TF32 convolutions where the recipe pins fp32) and in bf16 +
   channels_last: images/s, step time, peak ``torch.cuda.max_memory_allocated``; uint8 batches
   normalised in the step, as the trainer does;
2. trainer: the real :class:`~segbench.engine.trainer.Trainer` loop (the demo's U-Net on the
   synthetic set): train, checkpoint, resume (weights equal to an uninterrupted run's?) and
   evaluate, in fp32, bf16 and fp16;
3. loader: the train loader's items/s at ``data.num_workers: auto`` on full-size 2048x1024
   Cityscapes-layout frames under the PSPNet recipe's 713 crops, beside its step's items/s (part 1);
4. eval memory: peak memory of the Cityscapes evaluation protocols on one 1024x2048 image
   (PSPNet and DeepLab v3 R-101: whole image, mmseg's and PSPNet's sliding windows, flip);
5. the multi-scale + flip evaluation cost factor of every recipe whose protocol has several views;
6. segbench's DeepLab v3 vs torchvision's (R-50, OS 8, same settings): training step, fp32 and bf16 + CL;
7. SyncBatchNorm: conversion + a training forward/backward in one process against plain BN, and
   with two or more GPUs a real multi-process ``segbench train trainer.devices=N`` (DDP + SyncBN);
8. ``cudnn.benchmark`` off / on for one recipe; optionally SegNet-Basic trained on a CamVid copy
   for a fixed number of minutes (``--camvid``).

Every row is written to ``device_check.json`` and ``device_check.md`` in ``--out`` the moment it
is measured; an error in a row (OOM or any other) is recorded in that row and the check goes on;
``--budget-s`` is one budget for every part: once spent, the remaining rows say "skipped". The
cuDNN autotuner follows each recipe's ``trainer.cudnn_benchmark``, as ``segbench train`` sets it.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from hydra.utils import instantiate

from segbench.app import configs
from segbench.data.normalization import Normalization
from segbench.engine import build, measure
from segbench.engine.device import autocast, resolve_precision
from segbench.engine.inference import predict
from segbench.engine.optim import build_optimizer
from segbench.engine.protocol import Protocol
from segbench.io import write_json, write_text

DRY_RECIPES = ["segnet_basic_camvid", "deeplabv1_vgg16_voc_aug"]  # small nets; the second has a flip protocol
CUDNN_RECIPE = "deeplabv3_r101_voc_aug"
DRY_CUDNN_RECIPE = "segnet_basic_camvid"  # the dry run checks the code path, cheaply (a small net with BN)
LOADER_RECIPE = "pspnet_r101_cityscapes"
# Evaluation image sizes (H, W) of the datasets' val sets (MS+flip factor at the real size).
EVAL_SIZE = {"voc": (512, 512), "voc_aug": (512, 512), "cityscapes": (1024, 2048), "camvid": (360, 480),
             "sunrgbd": (480, 640), "isbi": (512, 512)}
WARMUP = 3  # cudnn.benchmark's algorithm search happens in the first steps


# ---- the report: every row on disk the moment it is measured ----------------------------------------
class Report:
    def __init__(self, out: Path, deadline: float, header: dict):
        self.out, self.deadline, self.result = out, deadline, {**header, "start": time.monotonic()}

    def add(self, part: str, row: dict) -> dict:
        self.result.setdefault(part, []).append(row)
        self.write()
        return row

    def write(self) -> None:
        self.result["total_s"] = time.monotonic() - self.result["start"]
        write_json(self.out / "device_check.json", self.result)
        write_text(self.out / "device_check.md", markdown(self.result))

    def measure(self, part: str, row: dict, fn, device) -> dict:
        """``row`` updated with ``fn()``, or the reason it has no figures: skipped when the budget is
        spent, "OOM", or the error (its last frame); the check goes on either way."""
        row.setdefault("status", "ok")
        if time.monotonic() > self.deadline:
            row["status"] = "skipped (time budget)"
        else:
            try:
                row.update(fn())
            except torch.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as err:  # noqa: BLE001 -- a row's failure is a finding, not the end of the check
                where = traceback.extract_tb(err.__traceback__)[-1]
                row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                row["error_at"] = f"{Path(where.filename).name}:{where.lineno}"
            finally:
                peak_reset(device)
        print(f"  {part}: {' '.join(str(v) for k, v in row.items() if k in ('recipe', 'setting', 'precision', 'protocol'))}"
              f" -> {row['status']}", flush=True)
        return self.add(part, row)


def compose(recipe: str, dry_run: bool, precision: str | None = None, extra=()):
    cfg = configs.compose("train", [f"experiment={recipe}", "model.pretrained=false", *extra])
    if dry_run:
        from segbench.app.smoke import smoke_config

        cfg = smoke_config(cfg)
    if precision:
        cfg.trainer.precision = precision
    if cfg.get("loss") is not None and "class_weights" in cfg.loss:
        cfg.loss.class_weights = None  # computed from the real labels (segbench data stats); cost is the same
    return cfg


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


# ---- 1. every recipe's step -------------------------------------------------------------------------
def time_training(cfg, device, iters: int, precision=None, channels_last=None, cudnn_benchmark=None) -> dict:
    """``iters`` timed steps of ``step.train_step`` (the trainer's own, normalising the loader's uint8
    batch) after WARMUP ones, at the recipe's crop and per-device batch."""
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("cudnn_benchmark", True) if cudnn_benchmark is None
                                          else cudnn_benchmark)  # as segbench train sets it
    default = measure.default_setting(device, cfg.trainer)  # what `segbench train` resolves `auto` to
    setting = measure.Setting(precision or default.precision,
                              default.channels_last if channels_last is None else channels_last)
    torch.manual_seed(0)
    model = measure.prepare(build.build_model(cfg), setting, device)
    optimizer = build_optimizer(cfg, model)
    criterion = instantiate(cfg.loss).to(device)
    crop = tuple(cfg.data.transforms.train.crop_size)
    images, labels = measure.loader_batch(int(cfg.data.batch_size), crop, int(cfg.data.num_classes), device)
    peak_reset(device)
    step = measure.make_train_step(model, criterion, optimizer, images, labels, setting,
                                   Normalization.from_data_config(cfg.data))
    stats = measure.time_calls(step, device, WARMUP if device.type == "cuda" else 1, iters)
    return {"precision": setting.precision, "channels_last": setting.channels_last, "iterations": iters,
            "step_s": stats["median_s"], "first_step_s": stats["first_s"],
            "images_per_s": images.shape[0] / stats["median_s"], "peak_memory_bytes": peak_bytes(device),
            "tf32_convs": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def recipe_rows(report: Report, recipes, device, args) -> None:
    for name in recipes:
        for label, precision, channels_last in (("as segbench train runs it", None, None),
                                                ("bf16 + channels_last", "bf16", True)):
            cfg = compose(name, args.dry_run, args.precision)
            row = {"recipe": name, "setting": label, "model": str(cfg.model._target_).rsplit(".", 1)[-1],
                   "crop": list(cfg.data.transforms.train.crop_size), "batch": int(cfg.data.batch_size),
                   "precision": None, "channels_last": None, "iterations": 0, "images_per_s": None,
                   "peak_memory_bytes": None}
            report.measure("recipes", row, lambda: time_training(cfg, device, args.iters, precision, channels_last),
                           device)


# ---- 2. the real Trainer loop ---------------------------------------------------------------------------
def trainer_rows(report: Report, device, args, tmp: Path) -> None:
    """train, checkpoint, resume, evaluate with segbench's Trainer, per precision."""
    for precision in ("fp32", "bf16", "fp16"):
        row = {"setting": "Trainer: train + checkpoint + resume + evaluate", "precision": precision}
        if precision == "fp16" and device.type != "cuda":
            report.add("trainer", {**row, "status": "skipped (fp16 is CUDA only)"})
            continue
        report.measure("trainer", row, lambda: trainer_loop(device, precision, tmp / precision, args.dry_run), device)


def trainer_loop(device, precision: str, root: Path, dry_run: bool) -> dict:
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.engine.trainer import Trainer

    size, train_n = (32, 16) if dry_run else (128, 256)
    overrides = [f"data.root={root.parent / 'synthetic'}", f"data.dataset.num_train={train_n}", "data.dataset.num_val=16",
                 f"data.dataset.image_size={size}", f"data.transforms.train.crop_size=[{size},{size}]",
                 "data.batch_size=8", "data.val_batch_size=8", f"trainer.device={device.type}",
                 f"trainer.precision={precision}", "trainer.progress=false", "trainer.max_iters=6",
                 "trainer.val_interval=3", "trainer.log_interval=3"]
    if dry_run:
        overrides += ["model.base_channels=4", "data.num_workers=0"]
    cfg = configs.compose("train", overrides)

    class StopAtFirstCheckpoint(Trainer):
        def validate(self, save=True, write=True):
            record = super().validate(save, write)
            if self.iteration == 3:
                raise KeyboardInterrupt  # a crash after the checkpoint
            return record

    start = time.monotonic()
    straight = Trainer(copy.deepcopy(cfg), root / "straight")
    validation = straight.fit()
    straight_s = time.monotonic() - start
    try:
        StopAtFirstCheckpoint(copy.deepcopy(cfg), root / "resumed").fit()
    except KeyboardInterrupt:
        pass
    checkpointed = load_checkpoint(root / "resumed" / "last.pt")["iteration"]
    resumed_cfg = copy.deepcopy(cfg)
    resumed_cfg.trainer.resume = True
    resumed = Trainer(resumed_cfg, root / "resumed")
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    return {"train_s": straight_s, "checkpoint_at": checkpointed,
            "resume_exact": all(torch.equal(a[k], b[k]) for k in a), "val_mIoU": validation.scores["mIoU"],
            "peak_memory_bytes": peak_bytes(device)}


# ---- 3. the loader at auto workers -------------------------------------------------------------------
def loader_rows(report: Report, device, args, tmp: Path) -> None:
    row = {"setting": f"{LOADER_RECIPE} train loader, data.num_workers=auto"}
    report.measure("loader", row, lambda: loader_rate(device, args, tmp), device)


def loader_rate(device, args, tmp: Path) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from data_pipeline import full_size_cityscapes

    from segbench.engine.distributed import World

    frames = 4 if args.dry_run else 24
    root = full_size_cityscapes(tmp / "cityscapes", frames, None)
    cfg = compose(LOADER_RECIPE, False, None, [f"data.root={root}", "data.num_workers=auto"])
    if args.dry_run:
        cfg.data.transforms.train.crop_size = [65, 65]
        cfg.data.batch_size = 2
    dataset = build.build_dataset(cfg, "train", train=True)
    loader = build.build_train_loader(cfg, dataset, World(), 0, device)
    batches = iter(loader)
    next(batches)  # workers started
    count = 3 if args.dry_run else 20
    start = time.monotonic()
    for _ in range(count):
        next(batches)
    rate = count * int(cfg.data.batch_size) / (time.monotonic() - start)
    step = next((r["images_per_s"] for r in report_rows(args, "recipes")
                 if r["recipe"] == LOADER_RECIPE and r.get("images_per_s")), None)
    return {"workers": loader.num_workers, "cores": len(os.sched_getaffinity(0)), "frames": frames,
            "crop": list(cfg.data.transforms.train.crop_size), "loader_items_per_s": rate,
            "step_items_per_s": step, "loader_over_step": rate / step if step else None}


def report_rows(args, part: str) -> list[dict]:
    return args.report.result.get(part, [])


# ---- 4. evaluation memory on a full Cityscapes image ----------------------------------------------------
def eval_memory_rows(report: Report, device, args) -> None:
    size = (64, 128) if args.dry_run else (1024, 2048)
    protocols = [("whole image", {}), ("whole image + flip", {"flip": True}),
                 ("slide 769, stride 513 (mmseg)", {"mode": "slide", "crop_size": [769, 769], "stride": [513, 513]}),
                 ("slide 713 (PSPNet), flip", {"mode": "slide", "slide_variant": "pspnet", "crop_size": [713, 713],
                                               "flip": True, "average": "probs"})]
    for recipe in ("pspnet_r101_cityscapes", "deeplabv3_r101_cityscapes"):
        for label, protocol in protocols:
            if args.dry_run and protocol.get("crop_size"):
                protocol = {**protocol, "crop_size": [33, 33], "stride": [22, 22]}
            row = {"recipe": recipe, "protocol": label, "image": list(size)}
            report.measure("eval_memory", row, lambda: eval_peak(recipe, protocol, size, device, args), device)


def eval_peak(recipe, protocol, size, device, args) -> dict:
    cfg = compose(recipe, args.dry_run)
    precision = resolve_precision(device, str(cfg.trainer.precision))
    model = build.build_model(cfg).to(device).eval()
    image = Normalization()(measure.loader_batch(1, size, 2, device)[0])
    peak_reset(device)
    seconds = measure.time_calls(predict_call(model, image, Protocol.from_config(protocol), precision), device, 0, 1)
    return {"precision": precision, "seconds": seconds["median_s"], "peak_memory_bytes": peak_bytes(device)}


# ---- 5. multi-scale + flip cost ---------------------------------------------------------------------------
def ms_flip_rows(report: Report, recipes, device, args) -> None:
    """Evaluation cost of each recipe's protocol over the same protocol with one view."""
    for name in recipes:
        cfg = compose(name, args.dry_run, args.precision)
        if args.dry_run:  # the dry run's small recipes evaluate one view: give them two scales + flip
            cfg.eval_protocol.scales, cfg.eval_protocol.flip = [0.5, 1.0], True
        protocol = Protocol.from_config(cfg.eval_protocol)
        views = len(protocol.scales) * (2 if protocol.flip else 1)
        if views == 1:
            continue
        size = tuple(cfg.data.transforms.train.crop_size) if args.dry_run else EVAL_SIZE.get(str(cfg.data.name), (512, 512))
        row = {"recipe": name, "image": list(size), "views": views, "protocol": protocol.describe(), "factor": None}
        report.measure("ms_flip", row, lambda: ms_flip_factor(cfg, protocol, size, device, args), device)


def ms_flip_factor(cfg, protocol, size, device, args) -> dict:
    single = Protocol.from_config({**_plain(cfg.eval_protocol), "scales": [1.0], "flip": False})
    precision = resolve_precision(device, str(cfg.trainer.precision))
    model = build.build_model(cfg).to(device).eval()
    image = Normalization()(measure.loader_batch(1, size, 2, device)[0])
    t_single = measure.time_calls(predict_call(model, image, single, precision), device, 1, args.eval_runs)["median_s"]
    t_full = measure.time_calls(predict_call(model, image, protocol, precision), device, 1, args.eval_runs)["median_s"]
    return {"single_s": t_single, "ms_flip_s": t_full, "factor": t_full / t_single}


def predict_call(model, image, protocol: Protocol, precision: str):
    """One ``predict`` as evaluation runs it: under inference mode and the recipe's autocast."""
    def call():
        with torch.inference_mode(), autocast(image.device, precision):
            return predict(model, image, protocol=protocol)
    return call


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True))


# ---- 6. segbench vs torchvision --------------------------------------------------------------------------
def torchvision_rows(report: Report, device, args) -> None:
    size, batch = (32, 2) if args.dry_run else (512, 8)
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        for who in ("torchvision", "segbench"):
            row = {"setting": f"{who} DeepLab v3 R-50 OS8", "precision": precision, "channels_last": channels_last,
                   "input": [batch, size, size]}
            report.measure("vs_torchvision", row, lambda: tv_step(who, precision, channels_last, size, batch, device,
                                                                  args), device)


def tv_step(who, precision, channels_last, size, batch, device, args) -> dict:
    from torchvision.models.segmentation import deeplabv3_resnet50

    from segbench.api import build_model
    from segbench.engine.losses import SegmentationLoss

    torch.manual_seed(0)
    model = (deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21) if who == "torchvision" else
             build_model("deeplabv3", 21, backbone="resnet50", output_stride=8, multi_grid=[1, 1, 1], pretrained=False))
    setting = measure.Setting(precision, channels_last)
    model = measure.prepare(model, setting, device)
    images, labels = measure.loader_batch(batch, (size, size), 21, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = measure.make_train_step(model, SegmentationLoss(), optimizer, images, labels, setting, Normalization())
    stats = measure.time_calls(step, device, WARMUP if device.type == "cuda" else 1, args.iters)
    return {"step_s": stats["median_s"], "images_per_s": batch / stats["median_s"],
            "peak_memory_bytes": peak_bytes(device)}


# ---- 7. SyncBN, DDP -------------------------------------------------------------------------------------
def sync_bn_rows(report: Report, device, args) -> None:
    report.measure("sync_bn", {"setting": "SyncBatchNorm, one process"}, lambda: sync_bn_check(device, args), device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    row = {"setting": f"segbench train trainer.devices={max(gpus, 2)} (DDP + SyncBN)", "gpus": gpus}
    if gpus < 2:
        report.add("sync_bn", {**row, "status": "skipped (one GPU)"})
        return
    report.measure("sync_bn", row, lambda: ddp_run(gpus, args), device)


def sync_bn_check(device, args) -> dict:
    """Conversion + a training forward/backward with SyncBatchNorm against plain BN (one process)."""
    from segbench.engine.distributed import convert_sync_batchnorm

    cfg = compose(DRY_CUDNN_RECIPE if args.dry_run else CUDNN_RECIPE, args.dry_run, args.precision)
    crop = tuple(cfg.data.transforms.train.crop_size)
    images, _ = measure.loader_batch(int(cfg.data.batch_size), crop, int(cfg.data.num_classes), device)
    images = Normalization.from_data_config(cfg.data)(images)
    out = {}
    for kind in ("BatchNorm", "SyncBatchNorm"):
        torch.manual_seed(0)
        model = build.build_model(cfg)
        if kind == "SyncBatchNorm":
            model = convert_sync_batchnorm(model)
            out["converted_layers"] = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        model = model.to(device).train()

        def call():
            model(images)["out"].float().logsumexp(1).mean().backward()
        out[f"{kind}_step_s"] = measure.time_calls(call, device, 1, max(1, args.iters // 10))["median_s"]
    out["ratio"] = out["SyncBatchNorm_step_s"] / out["BatchNorm_step_s"]
    return out


def ddp_run(gpus: int, args) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="ddp_"))
    command = [sys.executable, "-m", "segbench", "train", f"trainer.devices={gpus}", "trainer.max_iters=20",
               "trainer.val_interval=20", "trainer.progress=false", f"data.root={run_dir / 'synthetic'}",
               f"run_dir={run_dir / 'run'}"]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    from segbench.record import validation_of

    validation = validation_of(run_dir / "run")
    return {"command": " ".join(command[1:]), "exit_status": proc.returncode, "wall_s": time.monotonic() - start,
            "val_mIoU": validation.scores.get("mIoU") if validation else None,
            "status": "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}


# ---- 8. cudnn.benchmark, CamVid --------------------------------------------------------------------------
def cudnn_rows(report: Report, device, args) -> None:
    """One recipe, cudnn.benchmark off / on."""
    name = DRY_CUDNN_RECIPE if args.dry_run else CUDNN_RECIPE
    for label, benchmark in (("cudnn.benchmark=false", False), ("cudnn.benchmark=true", True)):
        cfg = compose(name, args.dry_run, args.precision)
        report.measure("cudnn_benchmark", {"recipe": name, "setting": label},
                       lambda: time_training(cfg, device, args.iters, cudnn_benchmark=benchmark), device)


def camvid_run(root: Path, minutes: float, rate: float | None, out: Path) -> dict:
    """SegNet-Basic on a CamVid copy for ``minutes``: iterations from the synthetic rate measured above."""
    cfg = compose("segnet_basic_camvid", False, None)
    per_s = (rate or 10.0) / int(cfg.data.batch_size)
    iters = max(1, int(minutes * 60 * per_s))
    run_dir = Path(tempfile.mkdtemp(prefix="segnet_basic_camvid_"))
    command = [sys.executable, "-m", "segbench", "train", "experiment=segnet_basic_camvid", f"data.root={root}",
               f"trainer.max_iters={iters}", f"trainer.val_interval={iters}", "trainer.progress=false",
               f"run_dir={run_dir}", f"loss.class_weights=null"]
    start = time.monotonic()
    with open(out / "camvid_train.log", "w") as log:
        status = subprocess.run(command, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    from segbench.record import validation_of

    validation = validation_of(run_dir)
    metrics = validation.scores if validation else {}
    return {"command": " ".join(command), "exit_status": status, "iterations": iters,
            "wall_s": time.monotonic() - start, "run_dir": str(run_dir),
            **{k: metrics.get(k) for k in ("mIoU", "mAcc", "aAcc")}}


# ---- the Markdown ------------------------------------------------------------------------------------------
COLUMNS = {  # part: (title, [(header, key or function)])
    "recipes": ("Training step, every recipe at its crop and per-device batch", [
        ("recipe", "recipe"), ("setting", "setting"), ("crop", "crop"), ("batch", "batch"), ("precision", "precision"),
        ("format", "format"), ("img/s", "images_per_s"), ("step s", "step_s"), ("peak MiB", "peak_memory_bytes")]),
    "trainer": ("The Trainer loop: train, checkpoint, resume, evaluate", [
        ("precision", "precision"), ("train s (6 it.)", "train_s"), ("checkpoint at", "checkpoint_at"),
        ("resume exact", "resume_exact"), ("val mIoU", "val_mIoU"), ("peak MiB", "peak_memory_bytes")]),
    "loader": ("The train loader at data.num_workers: auto, beside the step", [
        ("setting", "setting"), ("workers", "workers"), ("cores", "cores"), ("crop", "crop"),
        ("loader items/s", "loader_items_per_s"), ("step items/s", "step_items_per_s"),
        ("loader / step", "loader_over_step")]),
    "eval_memory": ("Evaluation memory, one Cityscapes image", [
        ("recipe", "recipe"), ("protocol", "protocol"), ("image", "image"), ("precision", "precision"),
        ("s", "seconds"), ("peak MiB", "peak_memory_bytes")]),
    "ms_flip": ("Multi-scale + flip evaluation cost (one image)", [
        ("recipe", "recipe"), ("image", "image"), ("views", "views"), ("1 view s", "single_s"),
        ("all views s", "ms_flip_s"), ("factor", "factor")]),
    "vs_torchvision": ("segbench vs torchvision, DeepLab v3 R-50 OS8 training step", [
        ("run", "setting"), ("precision", "precision"), ("format", "format"), ("input", "input"),
        ("img/s", "images_per_s"), ("step s", "step_s"), ("peak MiB", "peak_memory_bytes")]),
    "sync_bn": ("SyncBatchNorm and DDP", [
        ("setting", "setting"), ("converted layers", "converted_layers"), ("BN step s", "BatchNorm_step_s"),
        ("SyncBN step s", "SyncBatchNorm_step_s"), ("ratio", "ratio"), ("wall s", "wall_s"), ("val mIoU", "val_mIoU")]),
    "cudnn_benchmark": ("cudnn.benchmark", [
        ("recipe", "recipe"), ("setting", "setting"), ("precision", "precision"), ("img/s", "images_per_s"),
        ("peak MiB", "peak_memory_bytes")]),
}


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "format":
        value = row.get("channels_last")
        return "" if value is None else ("channels_last" if value else "NCHW")
    if value is None:
        return ""
    if key.endswith("bytes"):
        return f"{value / 2**20:,.0f}"
    if isinstance(value, list):
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(result: dict) -> str:
    from segbench.tables import markdown_table as table

    parts = [f"# segbench device check{' (DRY RUN: CPU, tiny sizes, not figures)' if result['dry_run'] else ''}",
             f"{result['device']}; torch {result['torch']}; {result['iterations']} timed iterations after {WARMUP} "
             f"warm-up, synthetic data; `{result['command']}`; {result.get('total_s', 0):.0f} s so far\n"]
    for part, (title, columns) in COLUMNS.items():
        rows = result.get(part)
        if rows:
            parts += [f"## {title}\n", table([h for h, _ in columns] + ["status"],
                                             [[cell(r, k) for _, k in columns] + [r.get("status", "ok")] for r in rows]),
                      ""]
    if result.get("camvid"):
        c = result["camvid"]
        parts += ["## SegNet-Basic on CamVid (fixed time)\n",
                  table(["iterations", "wall s", "val mIoU", "global acc", "exit"],
                        [[c["iterations"], f"{c['wall_s']:.0f}", cell(c, "mIoU"), cell(c, "aAcc"), c["exit_status"]]]),
                  f"\n`{c['command']}`"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/device_check/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 iteration: checks the script")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--eval-runs", type=int, default=3)
    parser.add_argument("--recipes", default=None, help="comma-separated subset of conf/experiment")
    parser.add_argument("--precision", default=None, help="override every recipe's trainer.precision (e.g. auto)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="one budget for every part: start no new row after")
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
    print(f"device check on {measure.describe_device(device)}: {len(recipes)} recipes; rows in {out}", flush=True)
    report = Report(out, time.monotonic() + args.budget_s,
                    {"device": measure.describe_device(device), "torch": torch.__version__, "dry_run": args.dry_run,
                     "iterations": args.iters, "cpu": measure.cpu_info(), "command": " ".join(sys.argv),
                     "gpus": torch.cuda.device_count() if device.type == "cuda" else 0})
    args.report = report
    with tempfile.TemporaryDirectory() as tmp:
        recipe_rows(report, recipes, device, args)
        trainer_rows(report, device, args, Path(tmp) / "trainer")
        loader_rows(report, device, args, Path(tmp))
        eval_memory_rows(report, device, args)
        ms_flip_rows(report, recipes, device, args)
        torchvision_rows(report, device, args)
        sync_bn_rows(report, device, args)
        cudnn_rows(report, device, args)
    if args.camvid and not args.dry_run and time.monotonic() < report.deadline:
        rate = next((r["images_per_s"] for r in report.result["recipes"] if r["recipe"] == "segnet_basic_camvid"), None)
        report.result["camvid"] = camvid_run(args.camvid, args.camvid_minutes, rate, out)
    report.write()
    print(markdown(report.result))
    print(f"wrote {out / 'device_check.md'} and device_check.json")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
