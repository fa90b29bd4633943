"""The types of the config parts the engine reads by name: the trainer, the data loader part of
``data``, the optimiser and the evaluation protocol.

Each dataclass is the schema of one YAML (``conf/trainer/default.yaml``, ``conf/data/*.yaml``,
``conf/optim/*.yaml``, ``eval_protocol:`` of ``conf/train.yaml``); the app layer registers them
with Hydra (:mod:`segbench.app.schema`) and each YAML names its schema first in its defaults
list. Composing then checks every value and every key: ``trainer.max_iters=abc`` or a misspelt
``trainer.max_iter=3`` is one OmegaConf message before any work, and the engine reads
``cfg.trainer.accumulate``, never ``cfg.trainer.get("accumulate", 1)``.

A default lives once. Where a YAML states a key's value (and describes it: ``segbench <verb>
--help`` prints those comments) the field here is ``MISSING`` and only types it; a field with a
value here is one no YAML states (optional keys, ``None`` = off). Ranges a type cannot say
(``max_iters >= 1``) and rules across keys are :mod:`segbench.app.validate`'s. Values that take
a word or a number (``devices: auto | N``, ``resume: true | <path>``) are ``Any`` and checked there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

# OmegaConf reads these annotations at runtime: typing's List/Optional, not `list[int] | None`.


@dataclass
class TrainerConfig:
    """``trainer:`` (conf/trainer/default.yaml describes every key)."""
    max_iters: int = MISSING
    val_interval: int = MISSING
    select_by: str = MISSING  # the validation score best.pt keeps: mIoU | aAcc | mAcc | fwIoU
    log_interval: int = MISSING
    device: str = MISSING
    precision: str = MISSING  # auto | fp32 | bf16 | fp16
    channels_last: Any = MISSING  # auto | true | false
    cudnn_benchmark: bool = MISSING
    compile: bool = MISSING
    grad_checkpoint: bool = MISSING
    accumulate: int = MISSING
    grad_clip: Optional[float] = MISSING
    seed: int = MISSING
    deterministic: bool = MISSING
    checkpoint_interval: Optional[int] = MISSING
    checkpoint_minutes: Optional[float] = MISSING
    resume: Any = MISSING  # false | true | auto | <run dir> | <file.pt>
    overwrite: bool = MISSING
    trust_checkpoint: bool = MISSING
    progress: bool = MISSING
    num_vis: int = MISSING
    devices: Any = MISSING  # N | auto
    sync_bn: Any = MISSING  # auto | true | false


@dataclass
class DataConfig:
    """``data:``: what the loaders and the model read by name; ``dataset`` and ``transforms`` are
    ``_target_`` configs of the dataset's own reader and pipeline, checked when they are built."""
    name: str = MISSING
    num_classes: int = MISSING
    root: str = MISSING
    mean: List[float] = MISSING
    std: List[float] = MISSING
    train_split: str = MISSING
    val_split: str = MISSING
    batch_size: int = MISSING  # the global batch, split over the processes
    val_batch_size: int = MISSING
    num_workers: Any = MISSING  # auto | N
    dataset: Any = MISSING
    transforms: Any = MISSING
    isbi_membrane_class: Optional[int] = None  # data=isbi: the membrane class the ISBI 2012 errors score


@dataclass
class OptimConfig:
    """``optim:``: a ``torch.optim`` class with its arguments (``build_optimizer`` passes every key
    but ``param_rules`` on); another argument of the class: ``+optim.<name>=<value>``."""
    _target_: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    param_rules: List[Any] = MISSING  # {pattern, lr_mult, weight_decay_mult, ndim} (engine/optim.py)


@dataclass
class SGDConfig(OptimConfig):
    momentum: float = MISSING


@dataclass
class AdamWConfig(OptimConfig):
    pass


@dataclass
class ProtocolConfig:
    """``eval_protocol:``: the keys of :class:`segbench.engine.protocol.Protocol`, which checks
    their values when it is built from them."""
    mode: str = MISSING  # whole | slide
    slide_variant: str = MISSING  # mmseg | pspnet
    crop_size: Any = MISSING  # null | N | [h, w]
    stride: Any = MISSING  # null | N | [h, w]
    scales: List[float] = MISSING
    flip: bool = MISSING
    average: str = MISSING  # logits | probs
    base_size: Optional[int] = MISSING
    output_stride: Optional[int] = MISSING
    postprocess: Any = MISSING  # null | a _target_ config (conf/postprocess/)
    boundary_f1: bool = MISSING
    bf_tolerance: float = MISSING
    isbi_errors: Any = MISSING  # null | false | the membrane class id
    window_batch: Optional[int] = None  # sliding windows per forward pass; null = Protocol's


SCHEMAS = {  # (group, schema name) -> dataclass, as conf/ names them
    ("trainer", "trainer_schema"): TrainerConfig,
    ("data", "data_schema"): DataConfig,
    ("optim", "sgd_schema"): SGDConfig,
    ("optim", "adamw_schema"): AdamWConfig,
    ("schema", "eval_protocol"): ProtocolConfig,
}
