"""The training loop: iteration-based (papers state iterations), SGD + poly LR, CE + aux.

Read top to bottom: :class:`Trainer` builds everything from the composed config (the app
layer, :mod:`segbench.app.train`, composes it and owns the run dir), :meth:`Trainer.fit`
loops ``trainer.max_iters`` steps, validating every ``trainer.val_interval`` with the same
evaluator ``segbench eval`` uses, and checkpoints ``last.pt`` / ``best.pt`` atomically.

Under DDP (``torchrun``, ``trainer.devices=N``, SLURM; see :mod:`segbench.engine.distributed`)
each process takes ``data.batch_size / N`` images per step, the LR is unchanged (the global
batch is the paper's), only rank 0 writes, and validation is sharded and summed.
The speed settings (``trainer.precision``, ``channels_last``, ``compile``, ``grad_checkpoint``)
and their measured defaults are in ``conf/trainer/default.yaml`` and the README's Performance section.
"""
from __future__ import annotations

import math
import shlex
import signal
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader
from tqdm import tqdm

from segbench.engine import build, distributed
from segbench.engine.device import autocast, resolve_channels_last, resolve_device, resolve_precision, seed_everything
from segbench.engine.optim import build_optimizer
from segbench.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from segbench.engine.evaluator import evaluate, metrics_record
from segbench.engine.sampler import ResumableSampler, SeededView
from segbench.errors import CheckpointError, DivergedError, Interrupted, SegbenchError
from segbench.io import read_json, write_json
from segbench.trust import instantiate_unwrapped

# Signals that stop training after the current step with last.pt written. Exit status 128 +
# signal number, the shell's convention: 130 = Ctrl-C, 143 = SIGTERM (scancel, preemption),
# 138 = SIGUSR1 (SLURM's `--signal=USR1@<s>` warning before the time limit), 140 = SIGUSR2
# (the warning submitit asks SLURM for; its requeue handler then runs, see stop()).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir, self.t = cfg, Path(run_dir), cfg.trainer
        with open_dict(cfg):
            cfg.run_dir = str(self.run_dir)  # the real one (a sweep job's subdir, a test's tmp dir)
        self.device = resolve_device(self.t.device)
        self.world = distributed.setup(self.device.type)
        if self.world.size > 1:
            distributed.check_launch_matches(self.t.get("devices", 1), self.device.type)
            # torchrun'd ranks resolve ${now:...} each for itself: all follow rank 0's run dir.
            self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.world))
            with open_dict(cfg):
                cfg.run_dir = str(self.run_dir)
        self.precision = resolve_precision(self.device, str(self.t.precision))
        self.channels_last = resolve_channels_last(self.device, self.precision, self.t.channels_last)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = bool(self.t.cudnn_benchmark)
        seed_everything(int(self.t.seed))
        if self.t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        if not self.world.is_main:  # rank 0 first: a dataset may generate/convert files on first use
            distributed.barrier(self.world)
        self.train_set = build.build_dataset(cfg, cfg.data.train_split, train=True)
        self.val_set = build.build_dataset(cfg, cfg.data.val_split, train=False)
        if self.world.is_main:
            distributed.barrier(self.world)
        self.model = build.build_model(cfg)
        build.apply_init_from(self.model, cfg.model, bool(self.t.resume), quiet=not self.world.is_main)
        self.model, note = distributed.maybe_sync_batchnorm(self.model, self.t.get("sync_bn", "auto"),
                                                            self.device, self.world)
        if note and self.world.is_main:
            print(note)
        if self.t.get("grad_checkpoint", False):
            build.enable_grad_checkpoint(self.model)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = build.count_parameters(self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.max_iters = int(self.t.max_iters)
        self.scheduler = instantiate_unwrapped(cfg.schedule, optimizer=self.optimizer, max_iters=self.max_iters)
        self.criterion = instantiate_unwrapped(cfg.loss).to(self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.precision == "fp16")
        self.iteration, self.best_miou = 0, -1.0
        self.train_time = 0.0
        self.writer = None  # opened by fit() only when there is something to train
        self.resumes: list[dict] = []  # every resume of this run: where, and what it changed
        self.resume_command: str | None = None  # printed on a signal; set by run()
        self._resume_rng = None
        self._stop_signal = 0
        self._last_save = (0, time.monotonic())  # (iteration, clock) of the last last.pt
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
        path = self.run_dir / "last.pt" if value is True or value == "auto" else Path(str(value))
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"trainer.resume: no checkpoint at {path}")
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, trust=bool(self.t.get("trust_checkpoint", False)))  # data only unless trusted
        changed = resume_changes(state.get("config") or {}, OmegaConf.to_container(self.cfg, resolve=True))
        load_model_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        self._resume_rng = state["rng"]["torch"]  # set again after the DataLoader draws its seed
        self.iteration, self.best_miou = state["iteration"], state["best_mIoU"]
        self.train_time = state.get("train_time", 0.0)
        self.resumes = list(state.get("resumes", []))
        self._last_save = (self.iteration, time.monotonic())
        if "trainer.max_iters" in changed:
            self.extend_schedule(changed["trainer.max_iters"][0])
        if changed:
            self.resumes.append({"iteration": self.iteration, "checkpoint": str(path), "changed": changed,
                                 "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        if self.world.is_main:
            print(f"resumed from {path} at iteration {self.iteration}"
                  + "".join(f"; {k}: {old} -> {new}" for k, (old, new) in changed.items()))

    def extend_schedule(self, old_max: int) -> None:
        """A resume with another ``trainer.max_iters`` re-plans the LR schedule for the new horizon.

        The checkpoint's scheduler state carries the old horizon (``LambdaLR`` saves its factor
        objects), so without this the poly LR would stay at 0 past the old end."""
        if self.max_iters <= self.iteration:
            raise SegbenchError(
                f"trainer.max_iters={self.max_iters}: the run is already at iteration {self.iteration} "
                f"(it was planned for {old_max}); give a larger trainer.max_iters to train further")
        for factor in self.scheduler.lr_lambdas:
            if hasattr(factor, "max_iters"):
                factor.max_iters = self.max_iters
        lrs = [base * factor(self.scheduler.last_epoch)
               for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

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
            "resumes": self.resumes,
            # what `auto` resolved to: `segbench eval` evaluates in the training's precision/format
            "speed": {"precision": self.precision, "channels_last": self.channels_last},
        }
        try:
            save_checkpoint(self.run_dir / name, state)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise SegbenchError(
                f"cannot write checkpoint {self.run_dir / name}: {reason}. The previous {name}, if any, is intact "
                f"(atomic write); free disk space or make the run dir writable, then resume with "
                f"trainer.resume={self.run_dir}") from None
        if name == "last.pt":
            self._last_save = (self.iteration, time.monotonic())
            if self.resumes:  # with the first checkpoint that includes them: a failed resume records nothing
                write_json(self.run_dir / "run.json", {"resumes": self.resumes})

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
                          self.precision, self.channels_last, self.t.grad_clip)
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
        if self.iteration >= self.max_iters:  # a finished run: report it, change nothing on disk
            print(f"run already finished ({self.iteration}/{self.max_iters} iterations); nothing to do")
            record = read_json(self.run_dir / "metrics.json") or self.validate(save=False, write=False)
            distributed.teardown()
            return record
        record = None
        if self.world.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        data = iter(self.train_loader())
        if self._resume_rng is not None:  # creating the iterator drew a seed from the global RNG
            torch.set_rng_state(self._resume_rng)
        bar = tqdm(total=self.max_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.world.is_main and self.t.progress))
        loss_sum, loss_count, window_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        log_every, val_every = int(self.t.log_interval), int(self.t.val_interval)
        self.net.train()
        previous_handlers = self._catch_stop_signals()
        try:
            while self.iteration < self.max_iters:
                if self._stop_signal and not self.world.size > 1:
                    self.stop()
                try:
                    batch = next(data)
                except Exception:
                    if self._stop_signal:  # a Ctrl-C also reaches the DataLoader workers
                        self.stop()
                    raise
                record, loss_sum, loss_count, window_start = self._iteration(
                    batch, bar, record, loss_sum, loss_count, window_start, log_every, val_every)
                if self.iteration < self.max_iters and self.stop_agreed():
                    self.stop()
        finally:
            self._restore_signals(previous_handlers)
            bar.close()
        if self.writer:
            self.writer.close()
        distributed.teardown()
        return record

    def _iteration(self, batch, bar, record, loss_sum, loss_count, window_start, log_every, val_every):
        """One step plus what follows it: logging, validation, the interval checkpoint."""
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
        elif self.checkpoint_due():
            self.save("last.pt")
        return record, loss_sum, loss_count, window_start

    # ---- interval checkpoints and signals ------------------------------------------------------
    def checkpoint_due(self) -> bool:
        """``trainer.checkpoint_interval`` iterations or ``trainer.checkpoint_minutes`` of wall time
        since the last ``last.pt``, whichever comes first (independent of validation)."""
        every, minutes = self.t.get("checkpoint_interval"), self.t.get("checkpoint_minutes")
        saved_at, saved_clock = self._last_save
        if every and self.iteration - saved_at >= int(every):
            return True
        return bool(minutes) and time.monotonic() - saved_clock >= 60 * float(minutes)

    def _catch_stop_signals(self) -> dict:
        """From here on SIGINT/SIGTERM/SIGUSR1 only set a flag; the loop stops after the step."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers can only be installed from the main thread

        def request_stop(signum, frame):
            if signum == self._stop_signal == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: the step itself hangs; stop now
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
        self._previous_handlers = previous
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def stop_agreed(self) -> bool:
        """Whether to stop now; under DDP every process stops at the same iteration (the one
        that got a signal first decides), or the collectives of the next step would hang."""
        if self.world.size == 1:
            return bool(self._stop_signal)
        import torch.distributed as dist

        flag = torch.tensor([self._stop_signal], dtype=torch.int64,
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._stop_signal = int(flag.item())
        return bool(self._stop_signal)

    def stop(self) -> None:
        """Write last.pt at the current iteration, say how to resume, and end the process with
        128 + the signal number (SIGUSR1/2: submitit's requeue handler runs first, when there is one)."""
        signum = self._stop_signal
        name = signal.Signals(signum).name
        if self._last_save[0] != self.iteration or not (self.run_dir / "last.pt").is_file():
            self.save("last.pt")
        if self.writer:
            self.writer.close()
        if self.world.is_main:
            command = self.resume_command or f"segbench train trainer.resume={shlex.quote(str(self.run_dir.resolve()))}"
            message = (f"{name}: stopped at iteration {self.iteration}/{self.max_iters}; "
                       f"checkpoint {self.run_dir / 'last.pt'}\nresume with: {command}")
        else:
            message = ""
        chained = getattr(self, "_previous_handlers", {}).get(signum)
        if signum in (signal.SIGUSR1, signal.SIGUSR2) and callable(chained):
            # Under hydra-submitit-launcher the job's SIGUSR1 handler is submitit's: it requeues
            # the job (which resumes from this last.pt) and exits.
            print(message, flush=True)
            chained(signum, None)
        raise Interrupted(message, 128 + signum, signum)

    def validate(self, save: bool = True, write: bool = True) -> dict:
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
                          self.channels_last, OmegaConf.to_container(self.cfg.eval_protocol),
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
        if write:
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
            "channels_last": self.channels_last,
            "grad_checkpoint": bool(self.t.get("grad_checkpoint", False)),
            "device": str(self.device),
            "world_size": self.world.size,
            "params": self.params,
            "train_time_s": round(self.train_time, 2),
            "peak_memory_bytes": peak,
            "best_mIoU": self.best_miou,
            "resumes": self.resumes,
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
    with autocast(images.device, precision):
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


# ---- resume policy ------------------------------------------------------------------------------
# Keys whose change on resume would alter the optimisation; only trainer.max_iters may change
# (the schedule is re-planned and the change recorded), the rest is refused.
RESUME_KEYS = ("optim", "schedule", "model", "data", "loss", "trainer.max_iters", "trainer.seed",
               "trainer.precision", "trainer.grad_clip")
RESUME_FREE = ("data.root", "data.num_workers", "data.val_batch_size", "data.val_split")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def resume_changes(saved: dict, now: dict) -> dict:
    """``{key: (checkpoint's, now)}`` for the optimisation keys a resume changes: only
    ``trainer.max_iters`` is accepted; any other change is refused, never recorded-but-ignored."""
    old, new = _flatten(saved), _flatten(now)

    def watched(key: str) -> bool:
        return (any(key == k or key.startswith(k + ".") for k in RESUME_KEYS)
                and not any(key == k or key.startswith(k + ".") for k in RESUME_FREE))

    changed = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if watched(k) and old[k] != new[k]}
    refused = {k: v for k, v in changed.items() if k != "trainer.max_iters"}
    if refused:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:6])
        more = f" (+{len(refused) - 6} more)" if len(refused) > 6 else ""
        raise SegbenchError(
            f"a resume continues the run as it was planned; these overrides would change it: {listed}{more}. "
            f"Only trainer.max_iters may change on resume (the LR schedule is re-planned and the change recorded "
            f"in run.json); train a new run (another run_dir=) for the rest")
    return changed
