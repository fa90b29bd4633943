"""``smoke=true``: a paper recipe shrunk to a seconds-long CPU run that still takes every code
path of it (``make reproduce-smoke``, the sweep's ``smoke=true``, the device check)."""
from __future__ import annotations

from omegaconf import DictConfig, open_dict

# What `smoke=true` sets: tiny, CPU, no downloads. ResNet-101/152 become ResNet-50 (timm / torchvision
# have no narrower variant of the same trunk); VGG-family nets and U-Net are narrowed by base_channels.
SMOKE = {
    "iterations": 2,
    "batch_size": 2,
    "crop": [32, 32],
    "base_channels": 4,
    "fc_channels": 16,
    "resnet": "resnet50",
    "slide_crop": [33, 33],  # k*OS+1 at output stride 8, 16 and 32 (engine/inference.py refuses other windows)
    "slide_stride": [16, 16],
    "base_size": 48,
    # multi-scale protocols keep two scales: the smallest and 1.0
}


def smoke_text(s: dict = SMOKE) -> str:
    """What ``smoke=true`` makes of a recipe, in words (the report quotes it)."""
    return (f"tiny widths / {s['resnet']} for ResNet-101/152, {s['iterations']} iterations, "
            f"{s['crop'][0]}x{s['crop'][1]} crops, random init, synthetic fixture data")



def smoke_config(cfg: DictConfig, settings: dict | None = None) -> DictConfig:
    """Shrink a recipe in place to a seconds-long CPU run that still takes every code path of it
    (its model family, loss, augmentations, evaluation protocol, CRF, BF score)."""
    s = {**SMOKE, **(settings or {})}
    with open_dict(cfg):
        cfg.smoke = True
        model = cfg.model
        model.pretrained = False
        if "base_channels" in model:
            model.base_channels = s["base_channels"]
        if "fc_channels" in model:
            model.fc_channels = s["fc_channels"]
        if str(model.get("backbone", "")).startswith(("resnet101", "resnet152")):
            model.backbone = s["resnet"]
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
