"""Command-line overrides, read by Hydra's own parser: the key a typed override sets, which keys
a multirun sweeps, and the folder each point of the grid gets.

A multirun job's folder is Hydra's ``hydra.job.override_dirname`` (``data=camvid,model=fcn8s``)
over the keys that vary: :func:`multirun_arguments` tells Hydra to leave the others out, so the
name travels inside the job's config to every launcher (joblib, SLURM), and :func:`job_dir_name`
makes it a safe folder name.
"""
from __future__ import annotations

import hashlib

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

# Never part of a job's folder name: paths and switches that do not change what is trained.
NOT_A_NAME = ("data.root", "run_dir", "trainer.progress", "trainer.device", "data.num_workers", "trainer.resume")
MAX_NAME = 120
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


def parse(args: list[str]) -> list[Override]:
    """The overrides among command-line arguments (flags such as ``--multirun`` left out)."""
    return OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-") and "=" in a])


def key_of(override: Override) -> str:
    """The config key an override sets: ``+model.x=1`` -> ``model.x``, ``model@m=x`` -> ``model@m``."""
    return override.get_key_element().lstrip("+~")


def split_override(text: str) -> tuple[str, str]:
    """``+model.x=1`` -> ``("model.x", "1")``: an override's key and its value as typed."""
    override = OverridesParser.create().parse_override(str(text))
    return key_of(override), str(text).partition("=")[2]


def swept_keys(args: list[str]) -> list[str]:
    """The keys a multirun command line sweeps: ``model=fcn8s,segnet`` or ``optim.lr=range(...)``."""
    return [key_of(o) for o in parse(args) if o.is_sweep_override() and not key_of(o).startswith(("hydra.", "hydra/"))]


def multirun_arguments(args: list[str]) -> list[str]:
    """``args`` plus the keys Hydra leaves out of a job's ``override_dirname``: the paths and
    switches, and, when something is swept, every key that is not."""
    if any(a.startswith(EXCLUDE_KEYS + "=") for a in args):
        return args  # the user chose
    swept = set(swept_keys(args))
    fixed = [key_of(o) for o in parse(args) if swept and key_of(o) not in swept]
    excluded = ",".join(repr(k) for k in dict.fromkeys([*NOT_A_NAME, *fixed]) if not k.startswith("hydra"))
    return [*args, f"{EXCLUDE_KEYS}=[{excluded}]"]


def job_dir_name(override_dirname: str, num) -> str:
    """``hydra.sweep.subdir`` of a multirun job: Hydra's ``override_dirname`` as one safe folder
    name (``job<num>`` when empty); long names are cut and keep a hash, so they stay unique."""
    name = str(override_dirname or "").replace("/", "_").replace("\\", "_") or f"job{num}"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
