"""The training loop: iteration-based (papers state iterations), SGD + poly LR, CE + aux.

Read top to bottom: :func:`run` builds everything from the config, :class:`Trainer.fit`
loops ``trainer.max_iters`` steps, validating every ``trainer.val_interval`` with the same
evaluator ``segbench eval`` uses, and checkpoints ``last.pt`` / ``best.pt`` atomically.

Under DDP (``torchrun``, ``trainer.devices=N``, SLURM; see :mod:`segbench.engine.distributed`)
each process takes ``data.batch_size / N`` images per step, the LR is unchanged (the global
batch is the paper's), only rank 0 writes, and validation is sharded and summed.
The speed settings (``trainer.precision``, ``channels_last``, ``compile``, ``grad_checkpoint``)
and their measured defaults are in ``conf/trainer/default.yaml`` and docs/performance.md.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader
from tqdm import tqdm

from segbench.engine import build, distributed
from segbench.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint, write_json
from segbench.engine.evaluator import evaluate, format_table, metrics_record
from segbench.engine.sampler import ResumableSampler, SeededView
from segbench.errors import CheckpointError, DivergedError, SegbenchError


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir, self.t = cfg, Path(run_dir), cfg.trainer
        with open_dict(cfg):
            cfg.run_dir = str(self.run_dir)  # the real one (a sweep job's subdir, a test's tmp dir)
        self.device = build.resolve_device(self.t.device)
        self.world = distributed.setup(self.device.type)
        if self.world.size > 1:
            distributed.check_launch_matches(self.t.get("devices", 1), self.device.type)
            # torchrun'd ranks resolve ${now:...} each for itself: all follow rank 0's run dir.
            self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.world))
            with open_dict(cfg):
                cfg.run_dir = str(self.run_dir)
        self.precision = build.resolve_precision(self.device, str(self.t.precision))
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = bool(self.t.cudnn_benchmark)
        build.seed_everything(int(self.t.seed))
        if self.t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        if not self.world.is_main:  # rank 0 first: a dataset may generate/convert files on first use
            distributed.barrier(self.world)
        self.train_set = build.build_dataset(cfg, cfg.data.train_split, train=True)
        self.val_set = build.build_dataset(cfg, cfg.data.val_split, train=False)
        if self.world.is_main:
            distributed.barrier(self.world)
        self.model = build.build_model(cfg)
        self.model, note = distributed.maybe_sync_batchnorm(self.model, self.t.get("sync_bn", "auto"),
                                                            self.device, self.world)
        if note and self.world.is_main:
            print(note)
        if self.t.get("grad_checkpoint", False):
            build.enable_grad_checkpoint(self.model)
        self.model.to(self.device)
        if self.t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = build.count_parameters(self.model)
        self.optimizer = build.build_optimizer(cfg, self.model)
        self.max_iters = int(self.t.max_iters)
        self.scheduler = instantiate(cfg.schedule, optimizer=self.optimizer, max_iters=self.max_iters)
        self.criterion = instantiate(cfg.loss).to(self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.precision == "fp16")
        self.iteration, self.best_miou = 0, -1.0
        self.train_time = 0.0
        self.writer = None
        if self.world.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        if self.t.resume:
            self.resume(self.resume_path())
        self.net = self.model
        if self.world.size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.t.get("compile", False):
            self.net = torch.compile(self.net)  # compiled on the first step (slow start)

    # ---- checkpoints ------------------------------------------------------------------------
    def resume_path(self) -> Path:
        value = self.t.resume
        path = self.run_dir / "last.pt" if value is True else Path(str(value))
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"trainer.resume: no checkpoint at {path}")
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, trust=bool(self.t.get("trust_checkpoint", False)))  # data only unless trusted
        load_model_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.iteration, self.best_miou = state["iteration"], state["best_mIoU"]
        self.train_time = state.get("train_time", 0.0)
        if self.world.is_main:
            print(f"resumed from {path} at iteration {self.iteration}")

    def save(self, name: str) -> None:
        if not self.world.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best_mIoU": self.best_miou,
            "train_time": self.train_time,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rng": {"torch": torch.get_rng_state()},
        }
        save_checkpoint(self.run_dir / name, state)

    # ---- data ---------------------------------------------------------------------------------
    def train_loader(self) -> DataLoader:
        per_process = int(self.cfg.data.batch_size) // self.world.size
        if per_process < 1:
            raise SegbenchError(f"data.batch_size={self.cfg.data.batch_size} is smaller than the {self.world.size} processes")
        sampler = ResumableSampler(len(self.train_set), per_process, seed=int(self.t.seed),
                                   start_iter=self.iteration, rank=self.world.rank, world_size=self.world.size)
        workers = int(self.cfg.data.num_workers)
        return DataLoader(SeededView(self.train_set), batch_size=per_process, sampler=sampler,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, drop_last=True)

    # ---- one step -----------------------------------------------------------------------------
    def step(self, batch: dict) -> torch.Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        loss = train_step(self.net, self.criterion, self.optimizer, self.scaler, images, labels,
                          self.precision, bool(self.t.channels_last), self.t.grad_clip)
        self.scheduler.step()
        return loss

    def check_finite(self, loss_sum: torch.Tensor) -> float:
        value = float(loss_sum)
        if not math.isfinite(value):
            kept = self.run_dir / "last.pt"
            raise DivergedError(
                f"loss became {value} at iteration {self.iteration}; stopped. "
                + (f"The last good checkpoint {kept} is intact. " if kept.exists() else "")
                + "Try a lower optim.lr, trainer.grad_clip=<norm> or trainer.precision=fp32."
            )
        return value

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        record = None
        if self.iteration >= self.max_iters:
            print(f"run already finished ({self.iteration}/{self.max_iters} iterations)")
        data = iter(self.train_loader()) if self.iteration < self.max_iters else iter(())
        bar = tqdm(total=self.max_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.world.is_main and self.t.progress))
        loss_sum, loss_count, window_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        log_every, val_every = int(self.t.log_interval), int(self.t.val_interval)
        self.net.train()
        while self.iteration < self.max_iters:
            batch = next(data)
            start = time.perf_counter()
            loss_sum += self.step(batch)
            loss_count += 1
            self.iteration += 1
            self.train_time += time.perf_counter() - start
            bar.update(1)
            last = self.iteration == self.max_iters
            if self.iteration % log_every == 0 or last or self.iteration % val_every == 0:
                loss = self.check_finite(loss_sum) / loss_count
                rate = loss_count * int(self.cfg.data.batch_size) / (time.perf_counter() - window_start)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                if self.writer:
                    self.writer.add_scalar("train/loss", loss, self.iteration)
                    self.writer.add_scalar("train/lr", lr, self.iteration)
                    self.writer.add_scalar("train/images_per_s", rate, self.iteration)
                loss_sum.zero_(); loss_count = 0; window_start = time.perf_counter()
            if self.iteration % val_every == 0 or last:
                record = self.validate()
        bar.close()
        if record is None:  # nothing left to train: report the current weights
            record = self.validate(save=False)
        if self.writer:
            self.writer.close()
        distributed.teardown()
        return record

    def validate(self, save: bool = True) -> dict:
        sampler = None
        if self.world.size > 1:
            sampler = distributed.ShardSampler(len(self.val_set), self.world.rank, self.world.size)
            distributed.broadcast_buffers(self.model, self.world)  # score the weights rank 0 saves
        loader = build.build_eval_loader(self.cfg, self.val_set, sampler=sampler)
        shown = []

        def keep_examples(batch, pred):
            if len(shown) < int(self.t.num_vis):
                shown.append((batch, pred.cpu()))

        matrix = evaluate(self.model, loader, self.val_set.num_classes, self.device, self.precision,
                          bool(self.t.channels_last), OmegaConf.to_container(self.cfg.eval_protocol),
                          on_batch=keep_examples, progress=self.t.progress and self.world.is_main)
        scores = matrix.compute()
        record = metrics_record(scores, self.val_set.class_names, self.cfg.data.val_split,
                                str(self.run_dir / "last.pt"), self.iteration,
                                OmegaConf.to_container(self.cfg.eval_protocol), source="train")
        if not self.world.is_main:
            return record
        self.log_validation(scores, shown)
        tqdm.write(f"[iter {self.iteration}] val mIoU {100 * scores['mIoU']:.2f}  aAcc {100 * scores['aAcc']:.2f}")
        if save:
            metric = str(self.t.get("select_by", "mIoU"))  # best.pt's criterion (SegNet §3.2: aAcc)
            improved = scores[metric] > self.best_miou
            if improved:
                self.best_miou = scores[metric]
            self.save("last.pt")
            if improved:
                self.save("best.pt")
        record["run"] = self.run_summary()
        write_json(self.run_dir / "metrics.json", record)
        return record

    def run_summary(self) -> dict:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {
            "model": self.cfg.model._target_,
            "data": self.cfg.data.name,
            "iterations": self.iteration,
            "max_iters": self.max_iters,
            "finished": self.iteration >= self.max_iters,
            "global_batch": int(self.cfg.data.batch_size),
            "crop_size": OmegaConf.to_container(self.cfg.data.transforms.train).get("crop_size"),
            "precision": self.precision,
            "channels_last": bool(self.t.channels_last),
            "grad_checkpoint": bool(self.t.get("grad_checkpoint", False)),
            "device": str(self.device),
            "world_size": self.world.size,
            "params": self.params,
            "train_time_s": round(self.train_time, 2),
            "peak_memory_bytes": peak,
            "best_mIoU": self.best_miou,
        }

    def log_validation(self, scores: dict, shown: list) -> None:
        if not self.writer:
            return
        for key in ("mIoU", "mAcc", "aAcc", "fwIoU"):
            self.writer.add_scalar(f"val/{key}", scores[key], self.iteration)
        for name, iou in zip(self.val_set.class_names, scores["IoU"]):
            if not math.isnan(iou):
                self.writer.add_scalar(f"val_IoU/{name}", iou, self.iteration)
        mean = np.array(self.cfg.data.mean) * 255
        std = np.array(self.cfg.data.std) * 255
        panels = []
        for batch, pred in shown[:1]:
            for i in range(min(int(self.t.num_vis), len(pred))):
                image = batch["image"][i].numpy().transpose(1, 2, 0) * std + mean
                image = np.clip(image, 0, 255).astype(np.uint8)
                gt = self.val_set.colorize(batch["label"][i].numpy().astype(np.uint8))
                pr = self.val_set.colorize(pred[i].numpy().astype(np.uint8))
                panels.append(np.concatenate([image, gt, pr], axis=1))
        if panels:
            self.writer.add_images("val/image_gt_pred", np.stack(panels), self.iteration, dataformats="NHWC")


def train_step(net, criterion, optimizer, scaler, images: torch.Tensor, labels: torch.Tensor,
               precision: str = "fp32", channels_last: bool = False, grad_clip=None) -> torch.Tensor:
    """One optimisation step: forward (under autocast), loss, backward, optimiser step.

    ``segbench bench`` and benchmarks/ time this very function. The gradients are released
    (``set_to_none``) *before* the forward, so they are not held alongside the activations:
    peak memory is one parameter-size lower than zeroing them after the forward.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with build.autocast(images.device, precision):
        outputs = net(images)
    loss = criterion(outputs, labels)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def run(cfg: DictConfig) -> dict:
    """``segbench train``; with ``trainer.devices=N`` (N > 1) and no launcher around, re-run
    as N DDP processes through torchrun."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    device_type = build.resolve_device(cfg.trainer.device).type
    processes = distributed.requested_processes(cfg.trainer.get("devices", 1), device_type)
    if processes > 1 and not distributed.launched():
        status = distributed.launch("train", list(hydra_cfg.overrides.task), processes, str(run_dir), device_type)
        if status:
            raise SegbenchError(f"the {processes} training processes failed (torchrun exit status {status}); "
                                f"their messages are above")
        return {}
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())  # eval may run from elsewhere
    trainer = Trainer(cfg, run_dir)
    if trainer.run_dir != run_dir:
        _remove_stray_run_dir(run_dir)
    start = time.perf_counter()
    record = trainer.fit()
    if trainer.world.is_main:
        print(_table_from_record(record, trainer.val_set.class_names))
        print(f"run dir: {run_dir}   wall time {time.perf_counter() - start:.1f} s   "
              f"val mIoU {100 * record['mIoU']:.2f}")
    return record


def _remove_stray_run_dir(path: Path) -> None:
    """A torchrun'd rank whose clock ticked past rank 0's made its own (otherwise empty) run dir."""
    if path.is_dir() and {p.name for p in path.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(path, ignore_errors=True)


def _table_from_record(record: dict, class_names) -> str:
    scores = {k: record[k] for k in ("aAcc", "mAcc", "mIoU", "fwIoU")}
    scores["IoU"] = [record["per_class"][n]["IoU"] for n in class_names]
    scores["Acc"] = [record["per_class"][n]["Acc"] for n in class_names]
    return format_table(scores, class_names)
