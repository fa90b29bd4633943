"""The training loop: iteration-based (papers state iterations), SGD + poly LR, CE + aux.

Read top to bottom: :class:`Trainer` builds everything from the composed config (the app layer,
:mod:`segbench.app.train`, composes it and owns the run dir); :meth:`Trainer.fit` loops
``trainer.max_iters`` steps (:func:`~segbench.engine.step.train_step`), validating every
``trainer.val_interval`` with the evaluator ``segbench eval`` uses, and writes ``last.pt`` /
``best.pt`` atomically, also every ``trainer.checkpoint_interval`` and on a stop signal.
Under DDP (:mod:`segbench.engine.distributed`) each process takes ``data.batch_size / N`` images
per step at the paper's LR, only rank 0 writes, and validation is sharded and summed. The speed
settings and their measured defaults: ``conf/trainer/default.yaml``, docs/performance.md.

``self.cfg`` is the composed config, typed by its schema (:mod:`segbench.engine.config`):
options are read as attributes (``self.cfg.trainer.accumulate``), their defaults live in the YAML.
One module for one idea, the training run, past 300 lines: what it decides (when a checkpoint is
due, what a failed write says, what run.json's training part holds) stays beside the loop that
decides it instead of in helpers elsewhere.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from segbench.data.normalization import Normalization
from segbench.engine import build, checkpoint, distributed, fits, schedule
from segbench.engine.checkpoint import load_checkpoint, save_checkpoint
from segbench.engine.device import ShapeFollowingBenchmark, bind_device, prepare_process
from segbench.engine.evaluator import evaluate, isbi_line, metrics_record
from segbench.engine.protocol import Protocol
from segbench.engine.inference import check_protocol
from segbench.engine.optim import build_optimizer
from segbench.engine.progress import TrainingLog
from segbench.engine.signals import StopRequest, shut_down_workers
from segbench.engine.step import train_step
from segbench.errors import DivergedError, Interrupted, SegbenchError
from segbench.record import (Best, Evaluation, Training, TrainingSummary, edit, error_text, read_best,
                             recorded_status, validation_of)
from segbench.trust import instantiate_unwrapped


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = copy.deepcopy(cfg)  # resolved below (run_dir); the caller's config stays as given
        self._set_up_machine(Path(run_dir))
        self.train_set, self.val_set = build.build_train_val(self.cfg, self.world)
        self.normalization = Normalization.from_data_config(self.cfg.data)  # on the device, in every step
        self._build_model()
        check_protocol(self.model, self.cfg.eval_protocol)  # an off-grid window fails now, not at validation
        self._build_optimisation()
        self.iteration, self.train_time = 0, 0.0
        self.best: Best | None = None  # the best validation by trainer.select_by (best.pt's)
        self.validation: Evaluation | None = None  # the latest
        self.log: TrainingLog | None = None  # opened by fit() only when there is something to train
        self.stop_request = StopRequest()  # active while fit() trains
        self.resumes: list[dict] = []  # every resume of this run: where, and what it changed
        self.resume_command: str | None = None  # printed on a signal; set by the app layer
        self._resume_rng = None
        self.failure: Exception | None = None  # this rank's, until every rank has heard of it (agree)
        self._last_save = (0, time.monotonic())  # (iteration, clock) of the last last.pt
        if self.cfg.trainer.resume:
            self.resume(checkpoint.resume_path(self.cfg.trainer.resume, self.run_dir))
        net = distributed.wrap(self.model, self.device, self.world)  # what the step runs: DDP with several processes
        self.net = torch.compile(net) if self.cfg.trainer.compile else net  # compiles on the first step (slow)

    # ---- building -----------------------------------------------------------------------------
    def _set_up_machine(self, run_dir: Path) -> None:
        """Device, process group, the run dir all ranks share, precision, memory format, seeds.
        The device is bound first: the process group and every collective run on it."""
        self.device = bind_device(self.cfg.trainer.device)
        self.world = distributed.setup(self.device)
        if self.world.size > 1:
            distributed.check_launch_matches(self.cfg.trainer.devices, self.device.type)
            # Only rank 0 claims the run dir (the app layer), and torchrun'd ranks resolve
            # ${now:...} each for itself: all follow rank 0's run dir and what it resumes.
            run_dir, resume = distributed.broadcast_object((str(run_dir), self.cfg.trainer.resume), self.world)
            run_dir = Path(run_dir)
            with open_dict(self.cfg):
                self.cfg.trainer.resume = resume
        self.run_dir = run_dir
        with open_dict(self.cfg):
            self.cfg.run_dir = str(run_dir)  # the real one (a sweep job's subdir, a test's tmp dir)
        # resolved once (cfg changes no more): what checkpoints and run.json record
        self.resolved = OmegaConf.to_container(self.cfg, resolve=True)
        self.precision, self.channels_last = prepare_process(self.cfg.trainer, self.device)

    def _build_model(self) -> None:
        self.model = build.build_model(self.cfg)
        build.apply_init_from(self.model, self.cfg.model, bool(self.cfg.trainer.resume), quiet=not self.world.is_main)
        self.model, note = distributed.maybe_sync_batchnorm(self.model, self.cfg.trainer.sync_bn,
                                                            self.device, self.world)
        if note and self.world.is_main:
            print(note)
        if self.cfg.trainer.grad_checkpoint:
            self.model.set_grad_checkpointing()
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = build.count_parameters(self.model)

    def _build_optimisation(self) -> None:
        self.optimizer = build_optimizer(self.cfg, self.model)
        options = self.cfg.trainer  # read once: used per step
        self.max_iters, self.val_interval, self.log_interval = options.max_iters, options.val_interval, options.log_interval
        self.checkpoint_interval, self.checkpoint_minutes = options.checkpoint_interval, options.checkpoint_minutes
        self.scheduler = instantiate_unwrapped(self.cfg.schedule, optimizer=self.optimizer, max_iters=self.max_iters)
        self.criterion = instantiate_unwrapped(self.cfg.loss).to(self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.precision == "fp16")
        self.accumulate = accumulation(options.accumulate, int(self.cfg.data.batch_size) // self.world.size)

    # ---- checkpoints ------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, trust=bool(self.cfg.trainer.trust_checkpoint))  # data only unless trusted
        changed = checkpoint.resume_changes(state.get("config") or {}, self.resolved)
        checkpoint.restore_training(state, path, self.model, self.optimizer, self.scheduler, self.scaler)
        self._resume_rng = state["rng"]  # set once the DataLoader has drawn its seed
        self.iteration, self.best = state["iteration"], read_best(state, self.cfg.trainer.select_by)
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
        """Write ``name`` (rank 0); under DDP a failure reaches every rank at the next step."""
        if not self.world.is_main:
            return
        with self.deferred():
            self._save(name, record)

    def _save(self, name: str, record: bool) -> None:
        if not checkpoint.finite(self.model):  # a NaN since the last loss report, or on another rank
            raise DivergedError(f"the weights are not finite at iteration {self.iteration}; stopped without "
                                f"writing {name}, the previous one is intact. Try a lower optim.lr, "
                                f"trainer.grad_clip=<norm> or trainer.precision=fp32.")
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best": None if self.best is None else asdict(self.best),
            "train_time": self.train_time,
            "config": self.resolved,
            "rng": checkpoint.rng_state(self.device),
            "resumes": self.resumes,
            # what `auto` resolved to: `segbench eval` evaluates in the training's precision/format
            "speed": {"precision": self.precision, "channels_last": self.channels_last},
        }
        try:
            save_checkpoint(self.run_dir / name, state)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise SegbenchError(f"cannot write checkpoint {self.run_dir / name}: {reason}. The previous {name}, if "
                                f"any, is intact (atomic write); free disk space or make the run dir writable, then "
                                f"resume with trainer.resume={self.run_dir}") from None
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
            if recorded_status(self.run_dir) != "finished":  # e.g. a sweep job that failed after its last checkpoint
                self.write_record(status="finished")
            distributed.teardown()
            return validation
        self.write_record(status="running")
        self.log = TrainingLog(self.run_dir, self.iteration, self.max_iters, self.device,
                               self.world, self.cfg.trainer.progress)
        data = None
        self.net.train()
        try:
            # (stop_request's handler is what the workers inherit until they ignore the signals)
            with self.stop_request, fits.explained_out_of_memory(self):
                data = iter(build.build_train_loader(self.cfg, self.train_set, self.world, self.iteration, self.device))
                if self._resume_rng is not None:  # creating the iterator drew a seed from the global RNG
                    checkpoint.restore_rng(self._resume_rng, self.device)
                self.loop(fits.checked_batches(self, data))  # a trial step on the first batch: does it fit?
        except BaseException as err:  # run.json says how it ended (a failed write must not hide why)
            with contextlib.suppress(OSError, SegbenchError):
                self.write_record(status="interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt)) else "failed",
                                  error="" if isinstance(err, Interrupted) else error_text(err))
            raise
        finally:
            shut_down_workers(data)  # they ignore SIGTERM: Python's exit could not end them
            self.log.close()
        self.write_record(status="finished")
        distributed.teardown()
        return self.validation

    def loop(self, data) -> None:
        """Step to ``max_iters``. Before each step the ranks agree (:meth:`agree`): all go on, all
        stop on a signal, or all end with the failure one of them ran into."""
        while True:
            batch = None
            if self.iteration < self.max_iters:
                with self.deferred():  # an unreadable image on one rank
                    batch = next(data)
            self.agree()  # also covers the previous step's checkpoint and validation
            if self.iteration >= self.max_iters:
                return
            if self.stop_request.signum:
                self.stop()
            self.advance(batch)

    def step(self, batch: dict, optimize: bool = True) -> torch.Tensor:
        """One iteration on ``batch`` (``optimize=False``: forward and backward only, the trial step)."""
        images, labels, weights = (batch[k].to(self.device, non_blocking=True) if k in batch else None
                                   for k in ("image", "label", "weight"))
        loss = train_step(self.net, self.criterion, self.optimizer, self.scaler, images, labels,
                          self.precision, self.channels_last, self.cfg.trainer.grad_clip, self.normalization, weights,
                          accumulate=self.accumulate, optimize=optimize)
        if optimize:
            self.scheduler.step()
        return loss

    def advance(self, batch: dict) -> None:
        """One step, then what follows it: the loss report, validation or the interval checkpoint.
        An error inside the step ends this rank at once (the others wait in its gradient
        all-reduce; torchrun then ends them); the report fails on every rank together."""
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
        elif self.checkpoint_due():
            self.save("last.pt")

    def checkpoint_due(self) -> bool:
        """``trainer.checkpoint_interval`` iterations or ``trainer.checkpoint_minutes`` of wall time
        since the last ``last.pt``, whichever comes first (independent of validation)."""
        saved_at, saved_clock = self._last_save
        if self.checkpoint_interval and self.iteration - saved_at >= self.checkpoint_interval:
            return True
        return bool(self.checkpoint_minutes) and time.monotonic() - saved_clock >= 60 * self.checkpoint_minutes

    # ---- all ranks stop together: on a signal or a failure -----------------------------------------
    @contextlib.contextmanager
    def deferred(self):
        """Under DDP, an error in this block (an unreadable image, rank 0's checkpoint write) is
        kept for the next :meth:`agree`, where every rank ends with it: raised at once, it would
        leave the other ranks waiting for this one in the next collective. One process: raised."""
        try:
            yield
        except Exception as err:
            if self.world.size == 1:
                raise
            self.failure = self.failure or err

    def agree(self) -> None:
        """Every rank learns what any rank ran into: a failure ends all of them with the same
        message (the failing rank keeps its own traceback when it is a bug, not a user error); a
        stop signal on any rank stops all at this iteration."""
        mine = None if self.failure is None else (str(self.failure) if isinstance(self.failure, SegbenchError)
                                                  else error_text(self.failure))
        signum, failure = distributed.agree(self.stop_request.signum, mine, self.world)
        if failure is not None:
            if self.failure is not None and not isinstance(self.failure, SegbenchError):
                raise self.failure
            raise SegbenchError(failure) from self.failure
        self.stop_request.signum = signum

    def stop(self) -> None:
        """Write last.pt at the current iteration, say how to resume, and end the process with
        128 + the signal number (SIGUSR1/2: submitit's requeue handler runs first, when there is one)."""
        request = self.stop_request
        if self._last_save[0] != self.iteration or not (self.run_dir / "last.pt").is_file():
            self.save("last.pt")
        self.agree()  # a checkpoint rank 0 could not write ends every rank with that message
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
            if len(shown) < self.cfg.trainer.num_vis:
                shown.append((batch, pred.cpu()))

        protocol = Protocol.from_config(self.cfg.eval_protocol)
        with ShapeFollowingBenchmark(self.model):  # cudnn.benchmark: training's crops have one shape, these may not
            matrix = evaluate(self.model, loader, self.val_set.num_classes, self.device, self.precision,
                              self.channels_last, protocol,
                              on_batch=keep_examples, progress=self.cfg.trainer.progress and self.world.is_main,
                              normalization=self.normalization)
        scores = matrix.compute()
        record = metrics_record(scores, self.val_set.class_names, self.cfg.data.val_split,
                                str(self.run_dir / "last.pt"), self.iteration, protocol, source="train")
        if not self.world.is_main:
            return record
        if self.log:  # TensorBoard: scores and panels
            self.log.validation(self.iteration, scores, shown, self.val_set, self.cfg.trainer.num_vis)
        line = f"[iter {self.iteration}] val mIoU {100 * scores['mIoU']:.2f}  aAcc {100 * scores['aAcc']:.2f}"
        if "warping_error" in scores:
            line += "  " + isbi_line(scores)
        tqdm.write(line)
        if save:
            metric = self.cfg.trainer.select_by  # best.pt's criterion (SegNet §3.2: aAcc)
            improved = self.best is None or scores[metric] > self.best.value
            if improved:
                self.best = Best(metric, scores[metric], self.iteration)
            self.save("last.pt", record=not write)  # with write, run.json is written once, below
            if improved:
                self.save("best.pt")
        if write:
            with self.deferred():  # like a checkpoint's write (save): every rank hears of a failure
                self.write_record(validation=record)
        return record

    def write_record(self, status: str | None = None, error: str = "", checkpoint: bool = False,
                     validation: Evaluation | None = None) -> None:
        """run.json's training part (rank 0, :func:`segbench.record.edit`): the iteration reached; a new
        ``status`` (and its ``error``); the config when the run starts; the summary and the resumes
        with each checkpoint (those last.pt holds), the validation with its checkpoint."""
        if not self.world.is_main:
            return
        with edit(self.run_dir) as run:
            run.kind, run.iteration, run.max_iters = "train", self.iteration, self.max_iters
            if status:
                run.status, run.error = status, error
            if status == "running":
                run.config = self.resolved
            if checkpoint or validation:
                run.training = run.training or Training()
                run.training.summary, run.training.resumes = self.run_summary(), list(self.resumes)
            if validation is not None:
                run.training.validation = validation

    def run_summary(self) -> TrainingSummary:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        crop = self.cfg.data.transforms.train.get("crop_size")  # a dataset's own pipeline: not in the schema
        return TrainingSummary(
            model=self.cfg.model._target_, data=self.cfg.data.name, global_batch=self.cfg.data.batch_size,
            crop_size=OmegaConf.to_container(crop) if OmegaConf.is_config(crop) else crop,
            precision=self.precision, channels_last=self.channels_last,
            grad_checkpoint=self.cfg.trainer.grad_checkpoint, device=str(self.device), world_size=self.world.size,
            params=self.params, train_time_s=round(self.train_time, 2), peak_memory_bytes=peak, best=self.best)


def accumulation(accumulate: int, per_process: int) -> int:
    """``trainer.accumulate``: forward/backward passes per optimiser step, each on an equal share
    of the process's batch (docs/performance.md: what it changes, BatchNorm included)."""
    if accumulate < 1:
        raise SegbenchError(f"trainer.accumulate must be a positive integer, got {accumulate!r}")
    if per_process % accumulate:
        raise SegbenchError(f"trainer.accumulate={accumulate} must divide the {per_process} images each process "
                            f"takes per step (data.batch_size / processes)")
    return accumulate
