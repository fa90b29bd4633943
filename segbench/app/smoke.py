"""``smoke=true``: a paper recipe shrunk to a seconds-long CPU run that still takes every code
path of it (``make reproduce-smoke``, the sweep's ``smoke=true``, the device check).

The run-level settings (iterations, batch, crops, windows) are :data:`SMOKE`; the model's are
its card: the ``smoke:`` block of its ``conf/model/<name>.yaml``, which the tests build too
(:func:`small_model`). A value of that block replaces the config's; a mapping value maps the
config's current value to its small one and leaves values it does not list (``backbone:
{resnet101: resnet50}`` shrinks a ResNet-101 recipe and keeps an Xception-65 one). The block is
never a constructor argument (:func:`segbench.engine.build.constructor_config` drops it).
"""
from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, open_dict

from segbench.app import configs

SMOKE_KEY = "smoke"

# What `smoke=true` sets besides the model's own small variant: tiny, CPU, no downloads.
SMOKE = {
    "iterations": 2,
    "batch_size": 2,
    "crop": [32, 32],
    "slide_crop": [33, 33],  # k*OS+1 at output stride 8, 16 and 32 (engine/inference.py refuses other windows)
    "slide_stride": [16, 16],
    "base_size": 48,
    # multi-scale protocols keep two scales: the smallest and 1.0
}


def smoke_text(s: dict = SMOKE) -> str:
    """What ``smoke=true`` makes of a recipe, in words (the report quotes it)."""
    return (f"tiny widths / resnet50 for ResNet-101/152, {s['iterations']} iterations, "
            f"{s['crop'][0]}x{s['crop'][1]} crops, random init, synthetic fixture data")


def small_variant(model: DictConfig | Mapping) -> dict:
    """The overrides that turn a model config into its small variant (its ``smoke:`` block
    applied to its current values); ``{}`` for a config without a block or already small."""
    overrides = {}
    for key, small in (model.get(SMOKE_KEY) or {}).items():
        if isinstance(small, Mapping):  # current value -> its small one; values not listed stay
            if model.get(key) in small:
                overrides[key] = small[model.get(key)]
        else:
            overrides[key] = small
    return overrides


def small_model(name: str) -> dict:
    """The small variant of model config ``name`` as ``build_model`` keyword arguments (the tests')."""
    return small_variant(configs.group("model", name))


def smoke_config(cfg: DictConfig, settings: dict | None = None) -> DictConfig:
    """Shrink a recipe in place to a seconds-long CPU run that still takes every code path of it
    (its model family, loss, augmentations, evaluation protocol, CRF, BF score)."""
    s = {**SMOKE, **(settings or {})}
    with open_dict(cfg):
        cfg.smoke = True
        model = cfg.model
        model.pretrained = False
        for key, value in small_variant(model).items():
            model[key] = value
        data = cfg.data
        data.batch_size = s["batch_size"]
        data.val_batch_size = 1
        data.num_workers = 0
        data.transforms.train.crop_size = list(s["crop"])
        t = cfg.trainer
        t.max_iters = s["iterations"]
        t.val_interval = s["iterations"]
        t.log_interval = 1
        t.device = "cpu"
        t.precision = "fp32"
        t.channels_last = False
        t.progress = False
        t.num_vis = 1
        protocol = cfg.eval_protocol
        if protocol.get("mode") == "slide":
            protocol.crop_size = list(s["slide_crop"])
            protocol.stride = list(s["slide_stride"])
        if protocol.get("base_size"):
            protocol.base_size = s["base_size"]
        scales = list(protocol.get("scales") or [1.0])
        if len(scales) > 2:  # keep the multi-scale path, drop the expensive large scales
            protocol.scales = [min(scales), 1.0]
    return cfg
