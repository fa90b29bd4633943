"""Every model config of conf/model/ (and each backbone a config can pick), at test widths.

Shared by the backbone-contract test and the state-dict snapshot (tests/unit/data/state_dict_keys.json,
written from the code before the backbone contract existed): ``case id -> (config name, overrides)``.
ResNet variants use resnet50 (same code path as 101/152); VGG nets are narrowed where the model allows.
"""
CASES = {
    "fcn32s": ("fcn32s", {"base_channels": 4}),
    "fcn16s": ("fcn16s", {"base_channels": 4}),
    "fcn8s": ("fcn8s", {"base_channels": 4}),
    "deeplabv1": ("deeplabv1", {"base_channels": 4, "fc_channels": 8}),
    "deeplabv2-resnet50": ("deeplabv2", {"backbone": "resnet50"}),
    "deeplabv2-vgg16": ("deeplabv2", {"backbone": "vgg16"}),
    "deeplabv3-resnet50": ("deeplabv3", {"backbone": "resnet50"}),
    "deeplabv3-resnet50s": ("deeplabv3", {"backbone": "resnet50", "deep_stem": True}),
    "deeplabv3plus-xception65": ("deeplabv3plus", {}),
    "deeplabv3plus-resnet50": ("deeplabv3plus", {"backbone": "resnet50"}),
    "deeplabv3plus-resnet50-tftap": ("deeplabv3plus", {"backbone": "resnet50", "low_level_tap": "tf"}),
    "pspnet-resnet50s": ("pspnet", {"backbone": "resnet50"}),
    "segnet": ("segnet", {"base_channels": 4}),
    "segnet_basic": ("segnet_basic", {"base_channels": 4}),
    "unet": ("unet", {"base_channels": 4}),
    "unet_small": ("unet_small", {}),
}
