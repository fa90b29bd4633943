"""``segbench train``: the app layer around :class:`segbench.engine.trainer.Trainer`.

The one place that reads Hydra's runtime for training: it validates the composed config,
claims the run directory (a run dir belongs to one run: refuse, resume or overwrite), launches
torchrun for ``trainer.devices=N``, writes ``.hydra/`` when a run starts, and prints the
results. The engine below takes the composed config and a directory, nothing else.
"""
from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.engine import distributed
from segbench.engine.device import resolve_device
from segbench.engine.evaluator import format_table
from segbench.engine.trainer import Trainer
from segbench.errors import CheckpointError, Interrupted, SegbenchError
from segbench.io import write_text
from segbench.record import edit
from segbench.runs import split_override

RUN_FILES = ("last.pt", "best.pt", "run.json")  # a dir holding any of these holds a run


def run(cfg: DictConfig):
    """``segbench train``; with ``trainer.devices=N`` (N > 1) and no launcher around, re-run
    as N DDP processes through torchrun. Returns the last validation (an empty dict for the
    process that only launched torchrun)."""
    from segbench.validate import check_train

    hydra_cfg = HydraConfig.get()
    made_dir = Path(hydra_cfg.runtime.output_dir)
    check_train(cfg, hydra_cfg)
    if distributed.launch_environment()[0] == 0:
        run_dir, resuming = claim_run_dir(cfg, made_dir, list(hydra_cfg.overrides.task))
    else:  # torchrun's / SLURM's other ranks: rank 0 alone claims (or clears) the run dir; the trainer follows it
        run_dir, resuming = made_dir, False
    if run_dir != made_dir:  # trainer.resume=<run dir>: Hydra's new dir (and its new parents) go
        from segbench.cli import discard_new_output_dir

        discard_new_output_dir(str(made_dir))
    device_type = resolve_device(cfg.trainer.device).type
    processes = distributed.requested_processes(cfg.trainer.get("devices", 1), device_type)
    if processes > 1 and not distributed.launched():
        status = distributed.launch("train", list(hydra_cfg.overrides.task), processes, str(run_dir), device_type)
        if status > 128:  # stopped by a signal: the ranks said where last.pt is and how to resume
            raise Interrupted("", status, status - 128)
        if status:
            raise SegbenchError(f"the {processes} training processes failed (torchrun exit status {status}); "
                                f"their messages are above")
        return {}
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())  # eval may run from elsewhere
    trainer = Trainer(cfg, run_dir)
    if trainer.run_dir != run_dir:  # a torchrun'd rank follows rank 0's run dir
        _remove_stray_run_dir(run_dir)
    trainer.resume_command = resume_command(list(hydra_cfg.overrides.task), trainer.run_dir)
    if not resuming and trainer.world.is_main:
        save_hydra_config(trainer.cfg, trainer.run_dir)  # the config as the trainer resolved it (run_dir)
    if trainer.world.is_main:  # where to look (tensorboard, run.json) while it trains, not only at the end
        print(f"run dir: {trainer.run_dir}", flush=True)
    start = time.perf_counter()
    validation = trainer.fit()
    if trainer.world.is_main:
        print(format_table(validation.scores, validation.class_names))
        print(f"run dir: {trainer.run_dir}   wall time {time.perf_counter() - start:.1f} s   "
              f"val mIoU {100 * validation.scores['mIoU']:.2f}")
    return validation



# ---- run directories are owned ------------------------------------------------------------------
def holds_run(path: Path) -> list[str]:
    """The files that make ``path`` a run directory (empty: a fresh or empty dir)."""
    return [name for name in RUN_FILES if (Path(path) / name).exists()]


def claim_run_dir(cfg: DictConfig, made_dir: Path, overrides: list[str]) -> tuple[Path, bool]:
    """The directory this command trains into, and whether it resumes there.

    * ``trainer.resume=<run dir>`` trains into that dir, from any cwd (Hydra's new dir is dropped);
      ``trainer.resume=<file.pt>`` starts a new run from those weights in ``run_dir``;
    * ``trainer.resume=true`` continues ``run_dir``'s last.pt; ``auto`` does if there is one
      (what a requeued SLURM job wants);
    * otherwise ``run_dir`` must not hold a run, unless ``trainer.overwrite=true`` clears it.
    """
    resume, t = cfg.trainer.resume, cfg.trainer
    if isinstance(resume, str) and resume not in ("auto", ""):
        target = Path(resume).expanduser().resolve()
        if target.is_dir():
            if not (target / "last.pt").is_file():
                raise CheckpointError(f"trainer.resume={resume}: no last.pt in {target}")
            _set(cfg, "trainer.resume", True)
            return target, True
        if not target.is_file():
            raise CheckpointError(f"trainer.resume={resume}: no run directory or checkpoint file at {target}")
        _set(cfg, "trainer.resume", str(target))
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
    if found and not resuming:
        if not t.get("overwrite", False):
            raise SegbenchError(
                f"{made_dir} already holds a run ({', '.join(found)}); continue it with trainer.resume=true "
                f"run_dir={made_dir}, replace it with trainer.overwrite=true, or choose another run_dir=")
        for name in (*RUN_FILES, "tb", ".hydra"):
            target = made_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return made_dir, resuming


def _set(cfg: DictConfig, key: str, value) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The same command with ``trainer.resume=<this run>`` (works from any directory)."""
    drop = ("trainer.resume", "run_dir", "hydra.run.dir", "trainer.overwrite")
    kept = [o for o in overrides if split_override(o)[0] not in drop]
    return shlex.join(["segbench", "train", *kept, f"trainer.resume={Path(run_dir).resolve()}"])


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
