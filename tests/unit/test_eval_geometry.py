"""Evaluation keeps the training geometry (engine/inference.py, models/base.py ``aligned_stride``).

A corner-aligned network (DeepLab, PSPNet) trained on k*OS+1 crops puts feature j on pixel OS*j;
every protocol must keep it there on images of any size, or its predictions drift towards the
bottom/right by up to OS-1 pixels. FCN, SegNet and U-Net declare no constraint and see exactly
the image, as before.
"""
import pytest
import torch
from torch import nn

import segbench
from segbench.engine.inference import aligned_size, eval_output_stride, predict
from segbench.errors import SegbenchError
from segbench.models.base import SegmentationModel
from segbench.models.blocks import upsample


class IdealPredictor(SegmentationModel):
    """A perfect stride-OS network: its feature j *is* the input at pixel OS*j (the ceil(d/OS)
    grid of a "same"-padded stride-OS trunk), resized to the input as DeepLab resizes
    (:func:`segbench.models.blocks.upsample`, corners aligned)."""

    corner_aligned = True

    def __init__(self, output_stride: int):
        super().__init__()
        self.output_stride = output_stride

    def forward(self, x):
        return {"out": upsample(x[..., ::self.output_stride, ::self.output_stride], x.shape[-2:])}


def quadrant_scene(height: int, width: int):
    """Image and label whose class is the sign of g = (y - y0)(x - x0): class 0 where g > 0, 1 where
    g < 0 (channel 2, always lowest, is a third class never present). g is bilinear in (y, x), so any
    correct bilinear resampling reproduces it exactly: an ideal predictor on the right grid
    reproduces the label. The borders (y0, x0) sit at 60% of the image, where a stretched grid has
    moved them several pixels, and clear of the bottom/right strips that the padding touches."""
    y0, x0 = 0.6 * height + 0.37, 0.6 * width + 0.29
    y = torch.arange(height, dtype=torch.float64)[:, None]
    x = torch.arange(width, dtype=torch.float64)[None, :]
    g = (y - y0) * (x - x0) / (height * width)
    image = torch.stack([g, -g, torch.full_like(g, -1.0)])[None].float()
    label = (g < 0).long()[None]
    near_border = ((y - y0).abs() <= 1) | ((x - x0).abs() <= 1)
    return image, label, near_border.expand(1, height, width)


PROTOCOLS = {
    "whole": {},
    "whole+flip": {"flip": True},
    "MS+flip": {"scales": [0.75, 1.0, 1.25, 1.5], "flip": True, "average": "probs"},
    "slide-mmseg": {"mode": "slide", "crop_size": "aligned", "flip": True},
    # taller than the image: mmseg clips the windows to it (then k*OS+1 only through the padding)
    "slide-mmseg-clipped": {"mode": "slide", "crop_size": "tall", "flip": True},
    "slide-pspnet": {"mode": "slide", "slide_variant": "pspnet", "crop_size": "aligned", "flip": True,
                     "average": "probs"},
}
# VOC's 500x375, Cityscapes' 1024x2048 scaled down by 4, an aligned size (16k+1) and odd sizes
SIZES = [(375, 500), (256, 512), (257, 513), (211, 303)]


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PROTOCOLS))
@torch.no_grad()
def test_an_ideal_predictor_reproduces_the_label_through_every_protocol(name, size, output_stride):
    image, label, near_border = quadrant_scene(*size)
    protocol = dict(PROTOCOLS[name])
    if protocol.get("crop_size") == "aligned":  # windows smaller than the image, k*OS+1 pixels
        protocol["crop_size"] = [8 * output_stride + 1] * 2
    elif protocol.get("crop_size") == "tall":
        protocol["crop_size"] = [64 * output_stride + 1, 8 * output_stride + 1]
    pred = predict(IdealPredictor(output_stride), image, protocol=protocol).argmax(1)
    wrong = (pred != label) & ~near_border
    assert not wrong.any(), f"{int(wrong.sum())} pixels off the label, farthest row {wrong.nonzero()[:, 1].max()}"


def test_aligned_sizes_are_the_next_k_os_plus_one():
    assert [aligned_size(n, 16) for n in (1, 17, 18, 375, 500, 513, 1024, 2048)] == \
        [1, 17, 33, 385, 513, 513, 1025, 2049]
    assert aligned_size(375, None) == 375


def test_a_window_off_the_training_grid_is_refused_with_the_size_that_fits():
    with pytest.raises(SegbenchError, match=r"crop_size=\[513,513\]"):
        predict(IdealPredictor(16), torch.zeros(1, 3, 40, 40), protocol={"mode": "slide", "crop_size": [512, 512]})


# ---- real networks -------------------------------------------------------------------------
def classifier_grid(model, image, output_stride=None):
    """Whole-image scores of ``image`` and the classifier's own (feature-resolution) logits of that pass."""
    features = []
    hook = model.classifier.register_forward_hook(lambda m, i, out: features.append(out))
    with eval_output_stride(model, output_stride):
        scores = predict(model, image)
    hook.remove()
    (grid,) = features
    return scores, grid


@torch.no_grad()
def test_deeplab_scores_on_pixel_os_times_j_are_its_feature_j():
    """Whole-image evaluation of a 45x70 image (neither side k*OS+1): the score at pixel (OS*i, OS*j)
    is exactly the classifier's feature (i, j) -- DeepLab v3 at its training OS 16 and at OS 8,
    DeepLab v1 (OS 8)."""
    torch.manual_seed(0)
    v3 = segbench.build_model("deeplabv3", 5, backbone="resnet50", backbone_width=4, aspp_channels=8).eval()
    v1 = segbench.build_model("deeplabv1", 5, base_channels=4, fc_channels=8).eval()
    image = torch.randn(1, 3, 45, 70)
    for model, stride, evaluated_at in ((v3, 16, None), (v3, 8, 8), (v1, 8, None)):
        scores, grid = classifier_grid(model, image, evaluated_at)
        on_grid = scores[..., ::stride, ::stride]
        assert scores.shape[-2:] == (45, 70)
        torch.testing.assert_close(on_grid, grid[..., :on_grid.shape[-2], :on_grid.shape[-1]], rtol=1e-5,
                                   atol=1e-5, msg=f"{type(model).__name__} at OS {stride}")


# ---- families without a constraint ------------------------------------------------------------
UNCONSTRAINED = {"fcn8s": ("fcn8s", {"base_channels": 4}), "unet": ("unet", {"base_channels": 4})}


@pytest.mark.parametrize("case", list(UNCONSTRAINED))
@torch.no_grad()
def test_fcn_and_unet_see_exactly_the_image(case):
    """Their geometry is their own (FCN: pad 100 and the crop offsets; U-Net: overlap-tile): the
    protocol passes the image unpadded, so whole-image evaluation is the model's own forward pass on
    it, and each scale is resized as before (round(d * s), pixel centres)."""
    name, kwargs = UNCONSTRAINED[case]
    torch.manual_seed(0)
    model = segbench.build_model(name, 3, **kwargs).eval()
    assert model.aligned_stride is None
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    image = torch.randn(1, 3, 37, 50)
    assert torch.equal(predict(model, image), model(image)["out"])
    predict(model, image, protocol={"flip": True, "scales": [1.0, 0.5]})
    assert seen[0] == (37, 50) and set(seen[2:]) == {(37, 50), (18, 25)}  # round(d * s), as before


def test_plain_modules_take_any_size():
    """A module that declares nothing (a user's own net) is run on the image as it is."""
    conv = nn.Conv2d(3, 2, 1)
    model = type("Plain", (nn.Module,), {"forward": lambda self, x: {"out": conv(x)}})()
    image = torch.randn(1, 3, 7, 9)
    assert torch.equal(predict(model, image), conv(image))


def test_a_trainer_refuses_an_off_grid_window_before_training(tiny_cfg, tmp_path):
    from segbench.engine.trainer import Trainer

    cfg = tiny_cfg("model=deeplabv1", "model.base_channels=4", "model.fc_channels=8", "eval_protocol.mode=slide",
                   "eval_protocol.crop_size=[32,32]")
    with pytest.raises(SegbenchError, match=r"crop_size=\[33,33\]"):
        Trainer(cfg, tmp_path / "run")
    assert not any(tmp_path.rglob("*.pt"))


@torch.no_grad()
def test_the_evaluator_scores_the_aligned_prediction():
    """Validation during training and `segbench eval` (engine/evaluator.evaluate) predict through the
    same geometry: the ideal predictor is right everywhere but within 1 px of the borders."""
    from segbench.engine.evaluator import evaluate

    image, label, near_border = quadrant_scene(375, 500)
    loader = [{"image": image, "label": label}]
    matrix = evaluate(IdealPredictor(16), loader, 3, torch.device("cpu"), protocol={"flip": True}, progress=False)
    assert matrix.compute()["aAcc"] >= 1 - near_border.float().mean().item()
