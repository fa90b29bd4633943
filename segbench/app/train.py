"""``segbench train`` and every sweep job: the one train service around
:class:`segbench.engine.trainer.Trainer`.

:func:`train_run` is the one path from a composed config to a trained run, for ``segbench train``
(:func:`run`, also each job of ``segbench train --multirun``) and for each job of ``segbench sweep``
(:mod:`segbench.app.sweep` adds only its bookkeeping). It shrinks a ``smoke=true`` config, claims
the run directory (a run dir belongs to one run: refuse, resume or overwrite; a sweep job's dir is
its own and resumes when it holds last.pt), takes a resumed run's own saved config with only the
overrides typed now (:func:`resumed_config`), validates the config before any work, launches
torchrun for ``trainer.devices=N``, replaces an old run only once the new one has a checkpoint
(:func:`set_aside_old_run`), writes ``.hydra/`` when a run starts, warns about crops larger than
the images, hands the trainer the command that resumes it, and prints the results. The engine
below takes the composed config and a directory, nothing else. User-facing rules: docs/safety.md.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from segbench.app import saved
from segbench.app.outputs import discard_new_output_dir
from segbench.app.overrides import split_override
from segbench.app.smoke import smoke_config
from segbench.app.validate import check_train, resolved
from segbench.engine import distributed
from segbench.engine.checkpoint import load_checkpoint, resume_changes
from segbench.engine.device import resolve_device
from segbench.engine.evaluator import format_table
from segbench.engine.trainer import Trainer
from segbench.errors import CheckpointError, Interrupted, SegbenchError
from segbench.io import write_text
from segbench.record import edit
from segbench.trust import check_config

RUN_FILES = ("last.pt", "best.pt", "run.json")  # a dir holding any of these holds a run
SWEEP_CONFIG = "sweep"  # conf/sweep.yaml: what a sweep job's torchrun'd ranks are composed from


class RanksFailed(SegbenchError):
    """The torchrun'd processes of one run failed; rank 0 has recorded why in run.json."""


def run(cfg: DictConfig):
    """``segbench train``; also the ranks torchrun starts for one sweep job (composed from
    conf/sweep.yaml by :func:`launch_ranks`), which train that job's own directory."""
    hydra_cfg = HydraConfig.get()
    return train_run(cfg, hydra_cfg, sweep_job=hydra_cfg.job.config_name == SWEEP_CONFIG)


def train_run(cfg: DictConfig, hydra_cfg, sweep_job: bool = False):
    """Train the run Hydra's ``hydra_cfg`` describes (its output dir, the overrides typed, the
    config choices) with ``cfg``: the one path of ``segbench train`` and of every sweep job.

    ``sweep_job``: the output dir is the job's own (:func:`claim_job_dir`) and a stopped run is
    resumed by re-running the sweep for this job (:func:`sweep_resume_command`). With
    ``trainer.devices=N`` (N > 1) and no launcher around, the run is re-started as N DDP
    processes through torchrun (:func:`launch_ranks`). Returns the last validation (an empty
    dict for the process that only launched torchrun)."""
    made_dir, overrides = Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task)
    if sweep_job and cfg.get("smoke"):  # shrunk before anything reads it: the ranks of a smoke job shrink it the
        smoke_config(cfg)              # same way; `segbench train +smoke=true` only labels a run (first_numbers' dry run)
    # torchrun's / SLURM's other ranks read the same resume/warm-start settings, but only rank 0 touches the
    # run dir (restores, refuses, clears); the trainer makes the others follow rank 0's run dir
    main = distributed.launch_environment()[0] == 0
    if sweep_job:
        run_dir, resuming = claim_job_dir(cfg, made_dir, main=main)
    else:
        run_dir, resuming = claim_run_dir(cfg, made_dir, overrides, main=main)
    if resuming:  # the run's own config, with what the user typed now: checked before any work
        cfg = resumed_config(cfg, run_dir, overrides)
    check_train(cfg, None if resuming else hydra_cfg)
    if run_dir != made_dir:  # trainer.resume=<run dir>: Hydra's new dir (and its new parents) go
        discard_new_output_dir(str(made_dir))
    device_type = resolve_device(cfg.trainer.device).type
    processes = distributed.requested_processes(cfg.trainer.get("devices", 1), device_type)
    if processes > 1 and not distributed.launched():
        launch_ranks(processes, overrides, run_dir, device_type, sweep_job)
        return {}
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())  # eval may run from elsewhere
    # trainer.overwrite=true (claim_run_dir refused otherwise); a sweep job's record stays where it is
    replacing = main and not sweep_job and not resuming and bool(holds_run(run_dir))
    with set_aside_old_run(run_dir) if replacing else contextlib.nullcontext():
        trainer = Trainer(cfg, run_dir)
        if trainer.run_dir != run_dir:  # a torchrun'd rank follows rank 0's run dir
            _remove_stray_run_dir(run_dir)
        trainer.resume_command = (sweep_resume_command(overrides, trainer.run_dir) if sweep_job
                                  else resume_command(overrides, trainer.run_dir))
        if not resuming and trainer.world.is_main:
            save_hydra_config(trainer.cfg, trainer.run_dir)  # the config as the trainer resolved it (run_dir)
        if trainer.world.is_main:  # where to look (tensorboard, run.json) while it trains, not only at the end
            warn_crop_padding(trainer.cfg, trainer.train_set)
            print(f"run dir: {trainer.run_dir}", flush=True)
        start = time.perf_counter()
        validation = trainer.fit()  # run.json gets the config the run really trains with (after smoke shrinking)
    if trainer.world.is_main:
        print(format_table(validation.scores, validation.class_names))
        print(f"run dir: {trainer.run_dir}   wall time {time.perf_counter() - start:.1f} s   "
              f"val mIoU {100 * validation.scores['mIoU']:.2f}")
    return validation


def launch_ranks(processes: int, overrides: list[str], run_dir: Path, device_type: str, sweep_job: bool) -> None:
    """Re-run this command as ``processes`` DDP processes in ``run_dir`` and wait for them. A sweep
    job's ranks are ``segbench train`` composed from conf/sweep.yaml: the same config as the job
    (``smoke=`` included), and :func:`run` knows them by that config as ranks of a sweep job."""
    arguments = [f"--config-name={SWEEP_CONFIG}", *overrides] if sweep_job else overrides
    status = distributed.launch("train", arguments, processes, str(run_dir), device_type)
    if status > 128:  # stopped by a signal: the ranks said where last.pt is and how to resume
        raise Interrupted("", status, status - 128)
    if status:
        raise RanksFailed(f"the {processes} training processes failed (torchrun exit status {status}); "
                          f"their messages are above")


def warn_crop_padding(cfg: DictConfig, dataset, looked_at: int = 16) -> None:
    """Say when the training crop is larger, in height and width, than every image looked at (even
    at the largest training scale): each crop is then mostly padding, which the loss ignores. A
    warning, not a refusal: padding a smaller image is sometimes the recipe (FCN trains whole VOC
    images padded to 500x500) and only a sample of the images is looked at (their headers)."""
    train = cfg.data.transforms.train
    crop = train.get("crop_size")
    if crop is None:
        return
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    scale = max(train.get("scale_range") or [1.0])
    step = max(1, len(dataset.samples) // looked_at)
    try:
        sizes = [_image_size(image) for image, _ in dataset.samples[::step][:looked_at]]
    except (OSError, ValueError, TypeError):
        return  # not one image file per sample (a volume): reading reports what is wrong
    if not sizes or any(h * scale >= crop_h or w * scale >= crop_w for h, w in sizes):
        return
    h, w = max(sizes, key=lambda hw: hw[0] * hw[1])
    filled = h * scale / crop_h * w * scale / crop_w
    at_scale = f" at scale {scale:g}" if scale != 1 else ""
    print(f"segbench: warning: data.transforms.train.crop_size=[{crop_h}, {crop_w}] is larger than every training "
          f"image looked at ({len(sizes)}, the largest {h}x{w}{at_scale}): at least {100 * (1 - filled):.0f}% of "
          f"each crop is padding, which the loss ignores. A crop no larger than the images trains on every pixel",
          file=sys.stderr, flush=True)


def _image_size(path) -> tuple[int, int]:
    """(height, width) from the file's header: nothing is decoded."""
    with Image.open(path) as image:
        return image.height, image.width


# ---- run directories are owned ------------------------------------------------------------------
def holds_run(path: Path) -> list[str]:
    """The files that make ``path`` a run directory (empty: a fresh or empty dir)."""
    return [name for name in RUN_FILES if (Path(path) / name).exists()]


def claim_run_dir(cfg: DictConfig, made_dir: Path, overrides: list[str], main: bool = True) -> tuple[Path, bool]:
    """The directory this command trains into, and whether it resumes there.

    * ``trainer.resume=<run dir>`` trains into that dir, from any cwd (Hydra's new dir is dropped);
      ``trainer.resume=<file.pt>`` starts a new run from those weights in ``run_dir`` (:func:`warm_start`);
    * ``trainer.resume=true`` continues ``run_dir``'s last.pt; ``auto`` does if there is one
      (what a requeued SLURM job wants);
    * otherwise ``run_dir`` must not hold a run, unless ``trainer.overwrite=true`` (the caller then
      replaces it through :func:`set_aside_old_run`). Nothing on disk changes here, except that a
      run an interrupted replacement left set aside is put back first (:func:`recover_set_aside`).

    ``main=False`` (a DDP rank other than 0): the same decision, read only: no restoring, and no
    refusal of a dir that rank 0 may already be writing to.
    """
    resume, t = cfg.trainer.resume, cfg.trainer
    if main:
        recover_set_aside(made_dir)
    if isinstance(resume, str) and resume not in ("auto", ""):
        target = Path(resume).expanduser().resolve()
        if target.is_dir():
            if main:
                recover_set_aside(target)
            if not (target / "last.pt").is_file():
                raise CheckpointError(f"trainer.resume={resume}: no last.pt in {target}")
            _set(cfg, "trainer.resume", True)
            return target, True
        if not target.is_file():
            raise CheckpointError(f"trainer.resume={resume}: no run directory or checkpoint file at {target}")
        warm_start(cfg, target)
        resuming = False  # a new run that starts from those weights: run_dir must be free
    elif resume == "auto":
        resuming = (made_dir / "last.pt").is_file()
        _set(cfg, "trainer.resume", resuming)
    elif resume is True:
        if not (made_dir / "last.pt").is_file():
            explicit = any(split_override(o)[0] in ("run_dir", "hydra.run.dir") for o in overrides)
            where = (f"{made_dir} holds no last.pt" if explicit else
                     f"run_dir is a new timestamped directory ({made_dir}), not the run to continue")
            raise CheckpointError(f"trainer.resume=true: {where}; pass run_dir=<the run> or trainer.resume=<the run>")
        return made_dir, True
    else:
        resuming = False
    found = holds_run(made_dir)
    if main and found and not resuming and not t.get("overwrite", False):
        raise SegbenchError(
            f"{made_dir} already holds a run ({', '.join(found)}); continue it with trainer.resume=true "
            f"run_dir={made_dir}, replace it with trainer.overwrite=true, or choose another run_dir=")
    return made_dir, resuming


def claim_job_dir(cfg: DictConfig, job_dir: Path, main: bool = True) -> tuple[Path, bool]:
    """A sweep job trains in its own directory (``<sweep dir>/<what varied>``), which its record
    already names: the job continues its ``last.pt`` when it has one (a rerun of an interrupted or
    failed sweep), else starts afresh there; ``trainer.resume=<file.pt>`` warm-starts a fresh job
    (:func:`warm_start`). ``trainer.resume=<run dir>`` would train every job of the grid into that
    one directory: refused. ``main=False``: the same decision, read only."""
    resume = cfg.trainer.resume
    if main:
        recover_set_aside(job_dir)
    if (job_dir / "last.pt").is_file():
        _set(cfg, "trainer.resume", True)
        return job_dir, True
    if isinstance(resume, str) and resume not in ("auto", ""):
        target = Path(resume).expanduser().resolve()
        if not target.is_file():
            raise CheckpointError(f"trainer.resume={resume}: a sweep job trains in its own directory ({job_dir}) and "
                                  f"continues its own last.pt; trainer.resume= may only name a checkpoint file to "
                                  f"start every job from (a warm start)")
        warm_start(cfg, target)
    _set(cfg, "trainer.resume", False)
    return job_dir, False


def warm_start(cfg: DictConfig, checkpoint_file: Path) -> None:
    """``trainer.resume=<file.pt>``: a new run whose network starts from the file's weights
    (``model.init_from``), with this command's optimiser, schedule and iteration count: the way
    to follow a NaN message's "try a lower optim.lr" from the last good checkpoint."""
    if cfg.model.get("init_from") not in (None, ""):
        raise SegbenchError(f"trainer.resume={checkpoint_file} and model.init_from={cfg.model.init_from} both say "
                            f"where the weights come from; keep one")
    _set(cfg, "model.init_from", str(checkpoint_file))
    _set(cfg, "trainer.resume", False)
    print(f"trainer.resume={checkpoint_file} is a file: a new run starting from its weights (a warm start); the "
          f"optimiser, LR schedule and iteration count start afresh from this command's settings. To continue "
          f"that run as planned, resume its directory instead", flush=True)


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """What ``trainer.resume=<run>`` trains with: the configuration saved in the run's last.pt, with
    only the overrides typed on this command on top, and refused now if a resume may not change them
    (:func:`segbench.engine.checkpoint.resume_changes`): before any data is read or generated."""
    path = run_dir / "last.pt"
    state = load_checkpoint(path, trust=bool(cfg.trainer.get("trust_checkpoint", False)), mmap=True)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} holds no config (was it written by segbench train?); a resume continues "
                              f"with the run's own configuration")
    check_config(state["config"], f"{path} (its saved config)")  # it is instantiated now: one rule for every config
    config = saved.for_resume(state["config"], cfg, overrides)
    _set(config, "trainer.resume", True)
    resume_changes(state["config"], resolved(config))
    return config


# ---- trainer.overwrite=true: the old run stays until the new one has a checkpoint -------------
SET_ASIDE = ".segbench-replaced"  # inside the run dir: a rename on the same file system
REPLACED = (*RUN_FILES, "tb", ".hydra")  # what makes up a run; other files in the folder stay


@contextlib.contextmanager
def set_aside_old_run(run_dir: Path):
    """Replace the run in ``run_dir`` without losing it to a failed start: its files move into
    ``run_dir/.segbench-replaced/`` while the new run checks its data and trains; they are deleted
    once the command ends with a checkpoint of the new run, and put back if it ends without one
    (a mistyped data.root, a corrupt image, Ctrl-C before the first checkpoint)."""
    aside = run_dir / SET_ASIDE
    aside.mkdir()
    for name in REPLACED:
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)
    print(f"trainer.overwrite=true: the run in {run_dir} is set aside in {aside} until the new run writes its "
          f"first checkpoint", flush=True)
    try:
        yield
    except BaseException:
        if not (run_dir / "last.pt").is_file():
            _restore(run_dir, aside)
            print(f"the new run wrote no checkpoint: the previous run in {run_dir} is restored", file=sys.stderr)
        raise
    finally:  # the new run has its checkpoint (or the old one is back): the set-aside copy goes
        shutil.rmtree(aside, ignore_errors=True)


def _restore(run_dir: Path, aside: Path) -> None:
    """Put the set-aside run back; what the new run wrote without a checkpoint (.hydra, tb, a
    run.json saying it failed) gives way."""
    for name in REPLACED:
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if (aside / name).exists():
            os.replace(aside / name, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_set_aside(run_dir: Path) -> None:
    """A replacement killed outright (SIGKILL, power) leaves the set-aside folder behind: restored
    when the new run had no checkpoint yet, deleted when it had one."""
    aside = run_dir / SET_ASIDE
    if not aside.is_dir():
        return
    if (run_dir / "last.pt").is_file():
        shutil.rmtree(aside, ignore_errors=True)
        return
    _restore(run_dir, aside)
    print(f"note: {run_dir} held a run set aside by an interrupted trainer.overwrite=true; it is restored",
          file=sys.stderr)


def _set(cfg: DictConfig, key: str, value) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The same command with ``trainer.resume=<this run>`` (works from any directory)."""
    drop = ("trainer.resume", "run_dir", "hydra.run.dir", "trainer.overwrite")
    kept = [o for o in overrides if split_override(o)[0] not in drop]
    return shlex.join(["segbench", "train", *kept, f"trainer.resume={Path(run_dir).resolve()}"])


def sweep_resume_command(overrides: list[str], job_dir: Path) -> str:
    """The sweep command that continues this one job (its grid point, its directory): the job's
    bookkeeping, ``smoke=`` and the sweep's table carry on as in the first attempt."""
    job_dir = Path(job_dir).resolve()
    return shlex.join(["segbench", "sweep", *overrides,
                       f"hydra.sweep.dir={distributed.hydra_quoted(str(job_dir.parent))}",
                       f"hydra.sweep.subdir={distributed.hydra_quoted(job_dir.name)}"])


def save_hydra_config(cfg: DictConfig, run_dir: Path) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, but only when a run starts
    (``hydra.output_subdir: null``): a resume must not overwrite the record of how it began."""
    hydra_cfg = HydraConfig.get()
    out = Path(run_dir) / ".hydra"
    texts = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)})),
        "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))),
    }
    for name, text in texts.items():
        write_text(out / name, text)
    with edit(run_dir) as run:  # the names the user chose (model=unet_small), for report and runs
        run.choices = {group: name for group, name in hydra_cfg.runtime.choices.items()
                       if name is not None and not group.startswith("hydra/")}


def _remove_stray_run_dir(path: Path) -> None:
    """A torchrun'd rank whose clock ticked past rank 0's made its own (otherwise empty) run dir."""
    if path.is_dir() and {p.name for p in path.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(path, ignore_errors=True)
