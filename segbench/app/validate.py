"""Config checks that run before any work: a bad value costs one second and one message, not a
traceback after the dataset was built or a run directory was filled.

:func:`check_train` (``segbench train``, sweep jobs) and :func:`check_eval` (``segbench eval``)
look at types and ranges only; what needs the disk (data layout, checkpoints) is checked where
it is read. Every problem raises :class:`~segbench.errors.SegbenchError` naming the key, the
value and what would be accepted.
"""
from __future__ import annotations

import numbers

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def positive_int(values: dict, key: str, optional: bool = False, minimum: int = 1) -> None:
    value = _get(values, key)
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SegbenchError(f"{key} must be {want}{' or null' if optional else ''}, got {value!r}")


def positive_number(values: dict, key: str, optional: bool = False, allow_zero: bool = False) -> None:
    value = _get(values, key)
    if value is None and optional:
        return
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
        want = "a number >= 0" if allow_zero else "a positive number"
        raise SegbenchError(f"{key} must be {want}{' or null' if optional else ''}, got {value!r}")


def size_pair(values: dict, key: str) -> None:
    """A crop / window size: null, a positive int, or [h, w] of positive ints."""
    value = _get(values, key)
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 2 or not all(_is_int(v) and v > 0 for v in items):
        raise SegbenchError(f"{key} must be [height, width] of positive integers (or null), got {value!r}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """``segbench train``: iterations, intervals, lr, batch, workers, crops, precision, class
    weights; the experiment's model/data. Returns the resolved config."""
    values = resolved(cfg)
    for key in ("trainer.max_iters", "trainer.val_interval", "trainer.log_interval"):
        positive_int(values, key)
    positive_int(values, "trainer.checkpoint_interval", optional=True)
    positive_int(values, "trainer.accumulate", optional=True)
    positive_number(values, "trainer.checkpoint_minutes", optional=True)
    positive_int(values, "trainer.seed", minimum=0)
    positive_number(values, "optim.lr")
    for key in ("optim.momentum", "optim.weight_decay"):
        positive_number(values, key, optional=True, allow_zero=True)
    positive_int(values, "data.batch_size")
    positive_int(values, "data.val_batch_size", optional=True)
    workers = _get(values, "data.num_workers")
    if workers != "auto" and (not _is_int(workers) or workers < 0):
        raise SegbenchError(f"data.num_workers must be auto or an integer >= 0, got {workers!r}")
    size_pair(values, "data.transforms.train.crop_size")
    size_pair(values, "eval_protocol.crop_size")
    size_pair(values, "eval_protocol.stride")
    choice(values, "trainer.precision", PRECISIONS)
    class_weights(values)
    resume = _get(values, "trainer.resume")
    if not isinstance(resume, (bool, str)):
        raise SegbenchError(f"trainer.resume must be true, false, auto or a run dir / checkpoint path, got {resume!r}")
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
    from segbench.app.configs import experiment_choices

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
    positive_int(values, "num_panels", minimum=0)
    choice(values, "precision", PRECISIONS, optional=True)
    size_pair(values, "protocol.crop_size")
    size_pair(values, "protocol.stride")
    return values
