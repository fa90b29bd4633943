"""The training loop: iteration-based (papers state iterations), SGD + poly LR, CE + aux.

Read top to bottom: :class:`Trainer` builds everything from the composed config (the app layer,
:mod:`segbench.app.train`, composes it and owns the run dir); :meth:`Trainer.fit` loops
``trainer.max_iters`` steps (:func:`~segbench.engine.step.train_step`), validating every
``trainer.val_interval`` with the evaluator ``segbench eval`` uses, and writes ``last.pt`` /
``best.pt`` atomically, also every ``trainer.checkpoint_interval`` and on a stop signal.
Under DDP (:mod:`segbench.engine.distributed`) each process takes ``data.batch_size / N`` images
per step at the paper's LR, only rank 0 writes, and validation is sharded and summed. The speed
settings and their measured defaults: ``conf/trainer/default.yaml``, the README's Performance section.
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from segbench.engine import build, checkpoint, distributed, schedule
from segbench.engine.checkpoint import load_checkpoint, save_checkpoint
from segbench.engine.device import prepare_process, resolve_device
from segbench.engine.evaluator import evaluate, isbi_line, metrics_record
from segbench.engine.protocol import Protocol
from segbench.engine.inference import Normalization
from segbench.engine.optim import build_optimizer
from segbench.engine.progress import TrainingLog
from segbench.engine.signals import StopRequest
from segbench.engine.step import train_step
from segbench.errors import Interrupted, SegbenchError
from segbench.record import Evaluation, error_text, record_training, validation_of
from segbench.trust import instantiate_unwrapped


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = copy.deepcopy(cfg)  # resolved below (run_dir); the caller's config stays as given
        self.t = self.cfg.trainer
        self._set_up_machine(Path(run_dir))
        self.train_set, self.val_set = build.build_train_val(self.cfg, self.world)
        self.normalization = Normalization.from_data_config(self.cfg.data)  # for the CRF and the panels
        self._build_model()
        self._build_optimisation()
        self.iteration, self.best_miou, self.train_time = 0, -1.0, 0.0
        self.validation: Evaluation | None = None  # the latest
        self.log: TrainingLog | None = None  # opened by fit() only when there is something to train
        self.stop_request = StopRequest()  # active while fit() trains
        self.resumes: list[dict] = []  # every resume of this run: where, and what it changed
        self.resume_command: str | None = None  # printed on a signal; set by the app layer
        self._resume_rng = None
        self._last_save = (0, time.monotonic())  # (iteration, clock) of the last last.pt
        if self.t.resume:
            self.resume(checkpoint.resume_path(self.t.resume, self.run_dir))
        net = distributed.wrap(self.model, self.device, self.world)  # what the step runs: DDP with several processes
        self.net = torch.compile(net) if self.t.get("compile", False) else net  # compiles on the first step (slow)

    # ---- building -----------------------------------------------------------------------------
    def _set_up_machine(self, run_dir: Path) -> None:
        """Device, process group, the run dir all ranks share, precision, memory format, seeds."""
        self.device = resolve_device(self.t.device)
        self.world = distributed.setup(self.device.type)
        if self.world.size > 1:
            distributed.check_launch_matches(self.t.get("devices", 1), self.device.type)
            # torchrun'd ranks resolve ${now:...} each for itself: all follow rank 0's run dir.
            run_dir = Path(distributed.broadcast_object(str(run_dir), self.world))
        self.run_dir = run_dir
        with open_dict(self.cfg):
            self.cfg.run_dir = str(run_dir)  # the real one (a sweep job's subdir, a test's tmp dir)
        self.config = OmegaConf.to_container(self.cfg, resolve=True)  # resolved once: cfg changes no more
        self.device, self.precision, self.channels_last = prepare_process(self.t, self.device, self.world.local_rank)

    def _build_model(self) -> None:
        self.model = build.build_model(self.cfg)
        build.apply_init_from(self.model, self.cfg.model, bool(self.t.resume), quiet=not self.world.is_main)
        self.model, note = distributed.maybe_sync_batchnorm(self.model, self.t.get("sync_bn", "auto"),
                                                            self.device, self.world)
        if note and self.world.is_main:
            print(note)
        if self.t.get("grad_checkpoint", False):
            self.model.set_grad_checkpointing()
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = build.count_parameters(self.model)

    def _build_optimisation(self) -> None:
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.max_iters = int(self.t.max_iters)
        self.val_interval, self.log_interval = int(self.t.val_interval), int(self.t.log_interval)  # read once:
        self.checkpoint_every = (self.t.get("checkpoint_interval"), self.t.get("checkpoint_minutes"))  # used per step
        self.scheduler = instantiate_unwrapped(self.cfg.schedule, optimizer=self.optimizer, max_iters=self.max_iters)
        self.criterion = instantiate_unwrapped(self.cfg.loss).to(self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.precision == "fp16")

    # ---- checkpoints ------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, trust=bool(self.t.get("trust_checkpoint", False)))  # data only unless trusted
        changed = checkpoint.resume_changes(state.get("config") or {}, self.config)
        checkpoint.restore_training(state, path, self.model, self.optimizer, self.scheduler, self.scaler)
        self._resume_rng = state["rng"]["torch"]  # set again after the DataLoader draws its seed
        self.iteration, self.best_miou = state["iteration"], state["best_mIoU"]
        self.train_time = state.get("train_time", 0.0)
        self.resumes = list(state.get("resumes", []))
        self._last_save = (self.iteration, time.monotonic())
        if "trainer.max_iters" in changed:  # re-plan the LR for the new horizon
            schedule.replan(self.scheduler, self.max_iters)
        if changed:
            self.resumes.append({"iteration": self.iteration, "checkpoint": str(path), "changed": changed,
                                 "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        if self.world.is_main:
            print(f"resumed from {path} at iteration {self.iteration}"
                  + "".join(f"; {k}: {old} -> {new}" for k, (old, new) in changed.items()))

    def save(self, name: str, record: bool = True) -> None:
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
            "config": self.config,
            "rng": {"torch": torch.get_rng_state()},
            "resumes": self.resumes,
            # what `auto` resolved to: `segbench eval` evaluates in the training's precision/format
            "speed": {"precision": self.precision, "channels_last": self.channels_last},
        }
        try:
            save_checkpoint(self.run_dir / name, state)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            raise checkpoint.write_failed(self.run_dir / name, err) from None
        if name == "last.pt":
            self._last_save = (self.iteration, time.monotonic())
            if record:  # the summary and resumes last.pt holds: a failed resume records nothing
                self.write_record(checkpoint=True)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> Evaluation:
        """Train to ``max_iters``; returns the last validation."""
        if self.iteration >= self.max_iters:  # a finished run: report it, change nothing on disk
            print(f"run already finished ({self.iteration}/{self.max_iters} iterations); nothing to do")
            validation = validation_of(self.run_dir) or self.validate(save=False, write=False)
            distributed.teardown()
            return validation
        self.write_record(status="running")
        self.log = TrainingLog(self.run_dir, self.iteration, self.max_iters, self.device,
                               self.world.is_main, bool(self.t.progress))
        data = iter(build.build_train_loader(self.cfg, self.train_set, self.world, self.iteration, self.device))
        if self._resume_rng is not None:  # creating the iterator drew a seed from the global RNG
            torch.set_rng_state(self._resume_rng)
        self.net.train()
        try:
            with self.stop_request:
                while self.iteration < self.max_iters:
                    if self.stop_agreed():
                        self.stop()
                    self.advance(self.next_batch(data))
        except BaseException as err:  # run.json says how it ended (a failed write must not hide why)
            with contextlib.suppress(OSError, SegbenchError):
                self.write_record(status="interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt)) else "failed",
                                  error="" if isinstance(err, Interrupted) else error_text(err))
            raise
        finally:
            self.log.close()
        self.write_record(status="finished")
        distributed.teardown()
        return self.validation

    def next_batch(self, data) -> dict:
        try:
            return next(data)
        except Exception:
            if self.stop_request.signum:  # a Ctrl-C also reaches the DataLoader workers
                self.stop()
            raise

    def step(self, batch: dict) -> torch.Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        loss = train_step(self.net, self.criterion, self.optimizer, self.scaler, images, labels,
                          self.precision, self.channels_last, self.t.grad_clip)
        self.scheduler.step()
        return loss

    def advance(self, batch: dict) -> None:
        """One step, then what follows it: the loss report, validation or the interval checkpoint."""
        start = time.perf_counter()
        loss = self.step(batch)
        self.iteration += 1
        self.train_time += time.perf_counter() - start
        self.log.add(loss)
        last, validating = self.iteration == self.max_iters, self.iteration % self.val_interval == 0
        if last or validating or self.iteration % self.log_interval == 0:
            self.log.report(self.iteration, self.optimizer.param_groups[0]["lr"], int(self.cfg.data.batch_size),
                            self.run_dir / "last.pt")
        if last or validating:
            self.validation = self.validate()
        elif checkpoint.due(self.iteration, self._last_save, *self.checkpoint_every):
            self.save("last.pt")

    # ---- stopping on a signal -------------------------------------------------------------------
    def stop_agreed(self) -> bool:
        """Whether to stop before the next step; under DDP every process stops at the same
        iteration (any rank's signal decides), or the collectives of the next step would hang."""
        if self.world.size > 1:
            self.stop_request.signum = distributed.any_rank(self.stop_request.signum, self.world)
        return bool(self.stop_request.signum)

    def stop(self) -> None:
        """Write last.pt at the current iteration, say how to resume, and end the process with
        128 + the signal number (SIGUSR1/2: submitit's requeue handler runs first, when there is one)."""
        request = self.stop_request
        if self._last_save[0] != self.iteration or not (self.run_dir / "last.pt").is_file():
            self.save("last.pt")
        message = (request.message(self.iteration, self.max_iters, self.run_dir, self.resume_command)
                   if self.world.is_main else "")  # rank 0 speaks for all
        self.log.close()  # TensorBoard flushed before a requeue handler may end the process
        request.hand_over(message)
        raise Interrupted(message, request.exit_status, request.signum)

    # ---- validation -------------------------------------------------------------------------------
    def validate(self, save: bool = True, write: bool = True) -> Evaluation:
        sampler = None
        if self.world.size > 1:
            sampler = distributed.ShardSampler(len(self.val_set), self.world.rank, self.world.size)
            distributed.broadcast_buffers(self.model, self.world)  # score the weights rank 0 saves
        loader = build.build_eval_loader(self.cfg, self.val_set, sampler=sampler)
        shown = []

        def keep_examples(batch, pred):
            if len(shown) < int(self.t.num_vis):
                shown.append((batch, pred.cpu()))

        protocol = Protocol.from_config(self.cfg.eval_protocol)
        matrix = evaluate(self.model, loader, self.val_set.num_classes, self.device, self.precision,
                          self.channels_last, protocol,
                          on_batch=keep_examples, progress=self.t.progress and self.world.is_main,
                          normalization=self.normalization)
        scores = matrix.compute()
        record = metrics_record(scores, self.val_set.class_names, self.cfg.data.val_split,
                                str(self.run_dir / "last.pt"), self.iteration, protocol, source="train")
        if not self.world.is_main:
            return record
        if self.log:  # TensorBoard: scores and panels
            self.log.validation(self.iteration, scores, shown, self.val_set, self.normalization, int(self.t.num_vis))
        line = f"[iter {self.iteration}] val mIoU {100 * scores['mIoU']:.2f}  aAcc {100 * scores['aAcc']:.2f}"
        if "warping_error" in scores:
            line += "  " + isbi_line(scores)
        tqdm.write(line)
        if save:
            metric = str(self.t.get("select_by", "mIoU"))  # best.pt's criterion (SegNet §3.2: aAcc)
            improved = scores[metric] > self.best_miou
            if improved:
                self.best_miou = scores[metric]
            self.save("last.pt", record=not write)  # with write, run.json is written once, below
            if improved:
                self.save("best.pt")
        if write:
            self.write_record(validation=record)
        return record

    def write_record(self, status: str | None = None, error: str = "", checkpoint: bool = False,
                     validation: Evaluation | None = None) -> None:
        """run.json's training part (rank 0): the config when the run starts, the summary with
        each checkpoint or validation (:func:`segbench.record.record_training`)."""
        if self.world.is_main:
            config = self.config if status == "running" else None
            summary = self.run_summary() if checkpoint or validation else None
            record_training(self.run_dir, self.iteration, self.max_iters, status, error, config, summary,
                            self.resumes, validation)

    def run_summary(self) -> dict:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {
            "model": self.cfg.model._target_,
            "data": self.cfg.data.name,
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
            "best_mIoU": self.best_miou,  # the best trainer.select_by value (best.pt's)
        }
