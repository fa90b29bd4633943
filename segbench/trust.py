"""What segbench accepts from files it did not write itself: configs, list files, output names.

Researchers evaluate checkpoints and run directories from other people. Three rules keep such
a file from running code or writing outside its folder (the README's "Security" section):

* **Configs** (:func:`check_config`): ``hydra.utils.instantiate`` calls whatever a
  ``_target_`` names, so a saved config is code. Every ``_target_`` of a config segbench is
  about to instantiate (composed from the command line, or read back from a checkpoint or a
  run directory) must be one that segbench's own config tree writes (every ``_target_`` in
  ``segbench/conf/**/*.yaml``, collected at run time, never a hand-kept list), or a
  ``torch.nn.Module`` class defined in a ``segbench.models`` module (a model someone added
  before its YAML file). Deliberately *not* "any name under ``segbench.``": that would admit
  ``segbench.io.write_json`` (writes any file), ``segbench.cli.main`` (runs any
  verb), ``segbench.__main__.X`` (importing it runs the CLI) and, through attribute look-up,
  ``segbench.models.fcn.os.system``.
* **Output names** (:func:`confined_path`): a file written for a sample (a prediction, a
  panel, a prepared label, an archive member) stays inside its output folder.
* **List files** (:func:`list_file_entries`): an entry with a ``..`` component is refused
  where the list is read, naming the file and the line.
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any, Iterator

import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from segbench.errors import SegbenchError

CONF_DIR = Path(__file__).parent / "conf"


class UntrustedConfigError(SegbenchError):
    """A config names a ``_target_`` segbench's own config tree does not produce."""


class UnsafePathError(SegbenchError):
    """A name (sample id, list entry, archive member) would lead out of its folder."""


# ---- configs ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def conf_targets(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every ``_target_`` value written in the YAML files under ``conf_dir`` (segbench/conf)."""
    found: set[str] = set()
    for path in sorted(Path(conf_dir).rglob("*.yaml")):
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):  # Hydra reports a broken config file itself
            continue
        if isinstance(tree, (dict, list)):
            found.update(value for _, value, ok in _walk_targets(tree, "")
                         if ok and isinstance(value, str) and "${" not in value)
    return frozenset(found)


def _is_segbench_model_class(target: str) -> bool:
    """``target`` is the canonical name of an ``nn.Module`` class defined in ``segbench.models``.

    Only ``module.Class`` with ``Class`` defined in ``module`` itself: no attribute chains
    (``segbench.models.fcn.os.system``) and no re-exported names. Only model files are imported
    to find out (importing e.g. ``segbench.__main__`` would run the CLI).
    """
    module_name, _, name = target.rpartition(".")
    parts = module_name.split(".")
    if (parts[:2] != ["segbench", "models"] or len(parts) < 3 or not name.isidentifier()
            or not all(p.isidentifier() and not p.startswith("_") for p in parts)):
        return False
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 -- not an importable segbench module: not allowed
        return False
    import torch  # deferred: the CLI checks every config through this module, `segbench --help` needs no torch

    obj = vars(module).get(name)
    return (isinstance(obj, type) and issubclass(obj, torch.nn.Module)
            and obj.__module__ == module_name and obj.__qualname__ == name)


def is_allowed_target(target: Any) -> bool:
    """The one rule: may segbench instantiate this ``_target_``?"""
    if not isinstance(target, str):
        return False
    return target in conf_targets() or _is_segbench_model_class(target)


def _children(node: Any) -> Iterator[tuple[str, Any, bool]]:
    """``(key, value, ok)`` of a dict/list node, values resolved; ``ok`` is False when an
    interpolation cannot be resolved (then instantiating it fails the same way)."""
    keys = node.keys() if isinstance(node, (dict, DictConfig)) else range(len(node))
    for key in keys:
        try:
            yield key, node[key], True
        except Exception:  # noqa: BLE001 -- missing value, failing resolver
            yield key, None, False


def _walk_targets(node: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    for key, value, ok in _children(node):
        where = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if key == "_target_":
            yield where, value, ok
        elif ok and isinstance(value, (dict, list, DictConfig, ListConfig)):
            yield from _walk_targets(value, where)


def check_config(cfg: Any, source: str | None = None) -> None:
    """Refuse ``cfg`` (DictConfig or plain dict) if any ``_target_`` in it, interpolations
    resolved, is not allowed by :func:`is_allowed_target`. ``source`` says where the config
    came from (a file, "the command line") and is named in the message, with the key path
    (from the config's root when ``cfg`` is a node of a larger DictConfig)."""
    prefix = cfg._get_full_key("") if isinstance(cfg, DictConfig) else ""
    for where, value, ok in _walk_targets(cfg, prefix):
        if ok and is_allowed_target(value):
            continue
        shown = repr(value) if ok else "(an interpolation that cannot be resolved)"
        origin = f" from {source}" if source else ""
        raise UntrustedConfigError(
            f"refused config{origin}: {where}={shown} is not a target segbench's config tree "
            f"(segbench/conf) names; instantiating it could run any code. Use one of the config "
            f"choices (model=<name>, data=<name>, ...) or add a YAML file under segbench/conf."
        )


# ---- paths ------------------------------------------------------------------------------------
def confined_path(out_dir: str | Path, name: str | Path, source: str | None = None) -> Path:
    """``out_dir / name``, or :class:`UnsafePathError` if that would resolve outside ``out_dir``.

    Stable API, used for every file written per sample or per archive member (predictions and
    panels of ``segbench eval``, ``segbench predict``, ``segbench data prepare`` and archive
    extraction of ``segbench data download``). ``name`` may contain sub-folders; it is refused
    when it is absolute, empty, has a ``..`` that climbs above ``out_dir``, or passes through a
    symbolic link leading out of it (symlinks are resolved). ``source`` (e.g. ``"val.txt line
    3"`` or the archive's path) is named in the message. Returns the unresolved ``out_dir / name``.
    """
    base = Path(out_dir)
    text = str(name)
    candidate = base / text
    inside = False
    if text and "\x00" not in text and not Path(text).is_absolute():
        root, target = base.resolve(), candidate.resolve()
        inside = target != root and target.is_relative_to(root)
    if not inside:
        origin = f" (from {source})" if source else ""
        raise UnsafePathError(f"refused to write {text!r}{origin}: it would land outside {base}")
    return candidate


def list_file_entries(path: str | Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank line of a dataset list file (VOC
    ``ImageSets``, SBD, CamVid/SegNet lists); a field with a ``..`` component is refused with
    the file and line, as it would lead a reader (and the file names written from its ids) out
    of the dataset folder. Absolute fields stay allowed: DeepLab/SegNet lists write
    ``/JPEGImages/<id>.jpg`` and the readers keep only their last parts."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        for field in fields:
            if ".." in Path(field.replace("\\", "/")).parts:
                raise UnsafePathError(f"{path} line {number}: {field!r} leads out of the dataset folder "
                                      f"('..'); a list file names files inside data.root")
        entries.append((number, fields))
    return entries


def instantiate_unwrapped(cfg, **kwargs):
    """``hydra.utils.instantiate`` behind the ``_target_`` check, letting our own errors through.

    Every object segbench builds from a config comes through here, so :func:`check_config` is
    the backstop for every config read from a file. Hydra wraps whatever a constructor raises
    in ``InstantiationException``; a user error (missing weights, missing data) must reach the
    CLI as the :class:`SegbenchError` it is.
    """
    check_config(cfg)
    try:
        return instantiate(cfg, **kwargs, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, SegbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
