"""Config checks that run before any work: a bad value costs one second and one message, not a
traceback after the dataset was built or a run directory was filled.

Types are the schema's (:mod:`segbench.engine.config`, registered by :mod:`segbench.app.schema`):
``trainer.max_iters=abc`` or a misspelt key never composes. What a type cannot say is checked
here: ranges (:data:`RANGES`), keys that take a word or a number (``data.num_workers``,
``trainer.resume``, crop sizes), and rules across keys (the global batch vs the processes, one
class weight per class, an experiment's own model and data). :func:`check_train` (``segbench
train``, sweep jobs) and :func:`check_eval` (``segbench eval``) look at values only; what needs
the disk (data layout, checkpoints) is checked where it is read. Every problem raises
:class:`~segbench.errors.SegbenchError` naming the key, the value and what would be accepted.
"""
from __future__ import annotations

import numbers

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segbench.app.configs import experiment_choices
from segbench.errors import SegbenchError, segbench_cause


def resolved(cfg: DictConfig) -> dict:
    """The whole config resolved once, so a broken interpolation or resolver (e.g.
    ``${class_weights:<missing file>}``) is one message naming the key, not a traceback later."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "config"
        cause = segbench_cause(err)
        if cause is not None:  # a resolver's own message, e.g. ${class_weights:<missing file>}
            raise SegbenchError(f"{key}: {cause}") from None
        raise SegbenchError(f"{key}: {str(err).splitlines()[0]}") from None


def _get(values: dict, key: str, default=None):
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_int(value) -> bool:
    return _is_int(value) and value >= 1


def _positive(value) -> bool:
    return _is_number(value) and value > 0


def _not_negative(value) -> bool:
    return _is_number(value) and value >= 0


# key, what it must be, the test, whether null is allowed (null: "off" / "the default")
RANGES = (
    ("trainer.max_iters", "a positive integer", _positive_int, False),
    ("trainer.val_interval", "a positive integer", _positive_int, False),
    ("trainer.log_interval", "a positive integer", _positive_int, False),
    ("trainer.checkpoint_interval", "a positive integer", _positive_int, True),
    ("trainer.accumulate", "a positive integer", _positive_int, False),
    ("trainer.checkpoint_minutes", "a positive number", _positive, True),
    ("trainer.seed", "an integer >= 0", lambda v: _is_int(v) and v >= 0, False),
    ("optim.lr", "a positive number", _positive, False),
    ("optim.momentum", "a number >= 0", _not_negative, True),
    ("optim.weight_decay", "a number >= 0", _not_negative, True),
    ("data.batch_size", "a positive integer", _positive_int, False),
    ("data.val_batch_size", "a positive integer", _positive_int, True),
    ("data.num_workers", "auto or an integer >= 0", lambda v: v == "auto" or (_is_int(v) and v >= 0), False),
    ("trainer.resume", "true, false, auto or a run dir / checkpoint path", lambda v: isinstance(v, (bool, str)), False),
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def in_range(values: dict, key: str, want: str, ok, optional: bool = False) -> None:
    value = _get(values, key, KeyError)
    if value is KeyError or (value is None and optional):  # absent: a key only some optimisers take
        return
    if not ok(value):
        raise SegbenchError(f"{key} must be {want}{' or null' if optional else ''}, got {value!r}")


def size_pair(values: dict, key: str) -> None:
    """A crop / window size: null, a positive int, or [h, w] of positive ints."""
    value = _get(values, key)
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 2 or not all(_is_int(v) and v > 0 for v in items):
        raise SegbenchError(f"{key} must be [height, width] of positive integers (or null), got {value!r}")


def choice(values: dict, key: str, allowed, optional: bool = False) -> None:
    value = _get(values, key)
    if value is None and optional:
        return
    if value not in allowed:
        raise SegbenchError(f"{key} must be {', '.join(allowed[:-1])} or {allowed[-1]}"
                            f"{' (or null)' if optional else ''}, got {value!r}")


def class_weights(values: dict) -> None:
    """One non-negative weight per class, in train-id order: cross-entropy otherwise fails at the
    first step, after the data was read and the model built."""
    weights, classes = _get(values, "loss.class_weights"), _get(values, "data.num_classes")
    if weights is None:
        return
    if not isinstance(weights, list) or not all(_is_number(w) and w >= 0 for w in weights):
        raise SegbenchError(f"loss.class_weights must be a list of numbers >= 0 (one per class), got {weights!r}")
    if _is_int(classes) and len(weights) != classes:
        raise SegbenchError(
            f"loss.class_weights has {len(weights)} weights but data.num_classes={classes}: one weight per class, "
            f"in train-id order (`segbench data stats data={_get(values, 'data.name')}` prints them)")


def check_train(cfg: DictConfig, hydra_cfg=None) -> dict:
    """``segbench train``: the ranges, crops, precision and class weights; the global batch against
    the processes; the experiment's model/data. Returns the resolved config."""
    values = resolved(cfg)
    for key, want, ok, optional in RANGES:
        in_range(values, key, want, ok, optional)
    size_pair(values, "data.transforms.train.crop_size")
    size_pair(values, "eval_protocol.crop_size")
    size_pair(values, "eval_protocol.stride")
    choice(values, "trainer.precision", PRECISIONS)
    class_weights(values)
    _check_batch_vs_processes(values)
    if hydra_cfg is not None:
        check_experiment_choices(values, hydra_cfg)
    return values


def _check_batch_vs_processes(values: dict) -> None:
    devices = _get(values, "trainer.devices", 1)
    if _is_int(devices) and devices > int(values["data"]["batch_size"]):
        raise SegbenchError(f"data.batch_size={values['data']['batch_size']} is the global batch and must be at "
                            f"least trainer.devices={devices} (one image per process)")


def check_experiment_choices(values: dict, hydra_cfg) -> None:
    """``experiment=X model=Y`` would put Y's number beside X's published one: refused while the
    run carries X's ``paper:`` block (``paper=null`` trains the combination without comparison)."""
    choices = hydra_cfg.runtime.choices
    name = choices.get("experiment")
    if not name or not values.get("paper"):
        return
    expected = experiment_choices(str(name))
    differ = {g: (expected[g], choices.get(g)) for g in expected if choices.get(g) != expected[g]}
    if differ:
        listed = ", ".join(f"{g}={now} (the recipe's is {g}={want})" for g, (want, now) in differ.items())
        raise SegbenchError(
            f"experiment={name} is compared with its paper's number, but {listed}; drop the override, "
            f"or add paper=null to train this combination without the paper comparison")


def check_eval(cfg: DictConfig) -> dict:
    values = resolved(cfg)
    which = values.get("which")
    if not isinstance(which, str) or not which:
        raise SegbenchError(f"which must be a checkpoint file name inside run= (best.pt, last.pt), got {which!r}")
    in_range(values, "num_panels", "an integer >= 0", lambda v: _is_int(v) and v >= 0)
    choice(values, "precision", PRECISIONS, optional=True)
    size_pair(values, "protocol.crop_size")
    size_pair(values, "protocol.stride")
    return values
