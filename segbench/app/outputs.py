"""What a command writes where, and the config resolvers that decide it.

Hydra makes a verb's output directory before the verb runs; :func:`note_new_dir` (the resolver
around ``hydra.run.dir``) remembers which directories did not exist before, so a command that
fails removes what it created and nothing else (:func:`discard_new_output_dir`). Importing
:mod:`segbench.app` registers the resolvers every segbench config may use.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import OmegaConf

from segbench.data.class_weights import load_class_weights
from segbench.app.overrides import job_dir_name

# Output directories this command's Hydra run will create, each with its nearest ancestor that
# existed before.
_NEW_DIRS: dict[str, Path] = {}

# What a failed start may leave in a directory it created: nothing that holds results (run.json
# then only says that the start failed, which the error message says too; a checkpoint keeps it).
_DISPOSABLE = {".hydra", "tb", "train.log", "eval.log", "run.json"}


def note_new_dir(path: str) -> str:
    """Resolver wrapped around ``hydra.run.dir``: remember what existed before Hydra makes it."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _NEW_DIRS.setdefault(str(target), existing)
    return path


def eval_dir(run: str | None, ckpt: str | None) -> str:
    """Where ``segbench eval`` runs: the run dir, or the folder holding the checkpoint."""
    if run:
        return note_new_dir(str(run))
    if ckpt:
        return note_new_dir(str(Path(ckpt).parent))
    return "."


def discard_new_output_dir(output_dir: str) -> None:
    """Remove the run dir a failed command created (and the empty parents it created with it),
    when it holds no checkpoint or record: failed starts leave no clutter behind."""
    target = Path(output_dir).expanduser().absolute()
    stop = _NEW_DIRS.get(str(target))
    if stop is None or target == stop or not target.is_dir():
        return  # the directory existed before this command: not ours to remove
    if {p.name for p in target.iterdir()} - _DISPOSABLE:
        return
    shutil.rmtree(target, ignore_errors=True)
    parent = target.parent
    while parent != stop and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


OmegaConf.register_new_resolver("segbench_eval_dir", eval_dir, replace=True)
OmegaConf.register_new_resolver("segbench_new_dir", note_new_dir, replace=True)
# `hydra.sweep.subdir`: a multirun job's folder is named by what varied
OmegaConf.register_new_resolver("segbench_job_dir", job_dir_name, replace=True)
# `loss.class_weights: ${class_weights:<file>}` reads `segbench data stats` output
OmegaConf.register_new_resolver("class_weights", load_class_weights, replace=True)
