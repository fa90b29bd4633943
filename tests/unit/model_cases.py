"""Every model config of conf/model/ (and each backbone a config can pick), at test widths.

Shared by the backbone-contract test and the state-dict snapshot (tests/unit/data/state_dict_keys.json,
regenerated with ``python -m tests.unit.test_backbone_contract --regenerate``): ``case id -> (config
name, overrides)``. Each config is built as its small variant (the ``smoke:`` block of its YAML, the
one ``smoke=true`` runs train), so a new model config is a case without an edit here; the variants
below add the other backbones and options a config can pick, on top of its small variant.
"""
from segbench.api import available
from segbench.app.smoke import small_model

VARIANTS = {
    "deeplabv2-vgg16": ("deeplabv2", {"backbone": "vgg16"}),
    "deeplabv3-resnet50s": ("deeplabv3", {"deep_stem": True}),
    "deeplabv3plus-resnet50": ("deeplabv3plus", {"backbone": "resnet50"}),
    "deeplabv3plus-resnet50-tftap": ("deeplabv3plus", {"backbone": "resnet50", "low_level_tap": "tf"}),
}
CASES = {
    **{name: (name, small_model(name)) for name in available("model")},
    **{case: (name, {**small_model(name), **extra}) for case, (name, extra) in VARIANTS.items()},
}
