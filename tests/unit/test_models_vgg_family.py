"""U-Net, FCN-32s/16s/8s, SegNet and DeepLab v1 LargeFOV: shapes, strides, parameter counts,
weight surgery and a one-batch overfitting check.

Random weights only (``pretrained=False``, or a monkeypatched loader returning a randomly
initialised torchvision state dict); nothing touches the network. Heavy nets run narrow
(``base_channels``) and on small inputs; paper-width parameter counts are taken on the
``meta`` device, which allocates nothing.
"""
from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

import segbench
from segbench.errors import SegbenchError, WeightsNotAvailableError
from segbench.models.backbones.vgg import DeepLabVGG16
from segbench.models.deeplabv1 import DeepLabV1
from segbench.models.fcn import FCN
from segbench.models.segnet import SegNet
from segbench.models.unet import UNet

# Small, fast variants of every network (name, overrides).
SMALL = {
    "unet": dict(base_channels=8),
    "unet_demo": dict(base_channels=16, padding="same", batch_norm=True),
    "fcn32s": dict(base_channels=8, pretrained=False),
    "fcn16s": dict(base_channels=8, pretrained=False),
    "fcn8s": dict(base_channels=8, pretrained=False),
    "segnet": dict(base_channels=8, pretrained=False),
    "deeplabv1": dict(base_channels=8, fc_channels=64, pretrained=False),
}
OUTPUT_STRIDE = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8, "deeplabv1": 8}


def build(key: str, num_classes: int = 3, **extra) -> torch.nn.Module:
    name = "unet" if key.startswith("unet") else key
    return segbench.build_model(name, num_classes, **{**SMALL[key], **extra})


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny convs gain nothing from threads, and on a busy 2-core CI box OpenMP spinning
    makes them 100x slower; restore the setting for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------
# Shapes and strides
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SMALL))
@pytest.mark.parametrize("size", [(97, 129), (128, 128), (5, 7)])
def test_output_is_input_size_without_aux(key, size):
    model = build(key).train()
    out = model(torch.randn(2, 3, *size))
    assert set(out) == {"out"}  # none of these papers has an auxiliary head
    assert out["out"].shape == (2, 3, *size)


def final_score_map(key: str, model: torch.nn.Module, size: int) -> torch.Size:
    """Spatial size of the score map the network upsamples to the input resolution."""
    seen = {}

    def record(module, args, output=None):
        seen["s"] = (args[0] if output is None else output).shape

    if key.startswith("fcn"):  # input of the final fixed bilinear deconvolution
        hook = model.upscore.register_forward_pre_hook(record)
    else:  # DeepLab: fc8's output, before the bilinear interpolation
        hook = model.classifier.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    hook.remove()
    return seen["s"][-2:]


@pytest.mark.parametrize("key", list(OUTPUT_STRIDE))
def test_output_stride(key):
    """Growing the input by 32 px grows the final score map by 32 / stride cells."""
    model = build(key).eval()
    stride = OUTPUT_STRIDE[key]
    assert model.output_stride == stride
    small, large = final_score_map(key, model, 65), final_score_map(key, model, 97)
    assert [b - a for a, b in zip(small, large)] == [32 // stride] * 2


def test_deeplab_trunk_is_stride_8_with_512_channels():
    trunk = DeepLabVGG16(pretrained=False)
    assert trunk.channels("out") == 512 and trunk.output_stride == 8
    assert trunk(torch.randn(1, 3, 65, 65))["out"].shape == (1, 512, 9, 9)  # ceil(65 / 8)


def test_unet_valid_tile_geometry():
    """Paper Fig. 1: a 572 x 572 tile gives a 388 x 388 map (width does not matter)."""
    model = UNet(2, in_channels=1, base_channels=4).eval()
    with torch.no_grad():
        assert model.forward_tile(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


def test_unet_valid_overlap_tile_alignment():
    """Output pixel (i, j) is input pixel (i, j): a tile cut from the image at a 16-aligned
    offset (with its 92 px context) reproduces the whole-image logits exactly."""
    model = UNet(3, base_channels=4).eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        full = model(image)["out"]
        a, tile = 96, 16 * 5 + 124  # output rows/cols a .. a + tile - 184
        part = model.forward_tile(image[..., a - 92 : a - 92 + tile, a - 92 : a - 92 + tile])
    n = tile - 184
    torch.testing.assert_close(part, full[..., a : a + n, a : a + n], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------
# Parameter counts at paper width (recipes.md §9)
# --------------------------------------------------------------------------------------
PAPER_COUNTS = [  # label, config, num_classes, overrides, paper params
    ("FCN-32s VGG16", "fcn32s", 21, {}, 134.35e6),
    ("FCN-16s VGG16", "fcn16s", 21, {}, 134.357354e6),  # computed in recipes.md §1.1
    ("FCN-8s VGG16", "fcn8s", 21, {}, 134.36e6),
    ("U-Net valid, 1 in / 2 cls", "unet", 2, {"in_channels": 1}, 31.03e6),
    ("SegNet VGG16-BN, 11 cls", "segnet", 11, {}, 29.45e6),
    ("DeepLab-LargeFOV", "deeplabv1", 21, {}, 20.5e6),
]


def test_parameter_counts_match_papers():
    rows = []
    for label, name, classes, overrides, paper in PAPER_COUNTS:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = segbench.build_model(name, classes, pretrained=False, **overrides)
        learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rows.append((label, learnable, total, paper))
    print("\n{:<28}{:>16}{:>16}{:>12}{:>9}".format("model", "learnable", "total", "paper", "diff"))
    for label, learnable, total, paper in rows:
        diff = learnable / paper - 1
        print(f"{label:<28}{learnable:>16,}{total:>16,}{paper / 1e6:>11.2f}M{diff:>+9.3%}")
    for label, learnable, _, paper in rows:
        assert abs(learnable / paper - 1) < 0.01, label


def test_segnet_decoder_layers_are_not_shared():
    """Encoder and decoder have the same conv widths mirrored: equal-sized halves (§3),
    which a decoder sharing modules with the encoder or itself would not give."""
    with torch.device("meta"):
        model = segbench.build_model("segnet", 11, pretrained=False)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    assert enc == 14_723_136  # paper §3: "14.7M"
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 13 + 12 and len({id(m) for m in bns}) == 25
    assert dec == 29_449_355 - enc


# --------------------------------------------------------------------------------------
# Weight surgery and pretrained loading (no network)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_vgg16():
    return torchvision.models.vgg16().eval()  # random init, torchvision's layout


def test_fcn_fc_to_conv_matches_linear_layers(random_vgg16):
    """fc6/fc7 as convolutions compute VGG's Linear layers on a 7x7 pool5 (FCN §3.1).

    Compared in float64 (fc6 in slices of 512 filters to bound memory): in float32 the two
    25,088-term sums differ by rounding alone (~4e-5), which says nothing of the surgery."""
    with torch.device("meta"):  # skip initialising 134M weights the load overwrites
        model = segbench.build_model("fcn32s", 21, pretrained=False)
    model = model.to_empty(device="cpu").eval()
    model.load_imagenet_vgg16(random_vgg16.state_dict())
    pool5 = torch.randn(2, 512, 7, 7, dtype=torch.float64)
    lin6, lin7 = random_vgg16.classifier[0], random_vgg16.classifier[3]
    with torch.no_grad():
        for rows in torch.arange(4096).split(512):
            conv = F.conv2d(pool5, model.fc6.weight[rows].double(), model.fc6.bias[rows].double())
            linear = F.linear(pool5.flatten(1), lin6.weight[rows].double(), lin6.bias[rows].double())
            torch.testing.assert_close(conv.flatten(1), linear, atol=1e-5, rtol=0)
        fc6_out = torch.randn(2, 4096, 1, 1, dtype=torch.float64).relu()
        conv = F.conv2d(fc6_out, model.fc7.weight.double(), model.fc7.bias.double())
        linear = F.linear(fc6_out.flatten(1), lin7.weight.double(), lin7.bias.double())
    torch.testing.assert_close(conv.flatten(1), linear, atol=1e-5, rtol=0)
    # and the trunk: conv1_1 (pad 100 aside) and conv5_3 carry VGG's weights
    torch.testing.assert_close(model.backbone.stage1.conv1_1.weight, random_vgg16.features[0].weight)
    torch.testing.assert_close(model.backbone.stage5.conv5_3.weight, random_vgg16.features[28].weight)


def test_deeplab_pretrained_uses_decimated_fc(monkeypatch, random_vgg16):
    state = random_vgg16.state_dict()
    monkeypatch.setattr("segbench.models.deeplabv1.vgg16_imagenet_state_dict", lambda: state)
    model = segbench.build_model("deeplabv1", 21, pretrained=True)
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    torch.testing.assert_close(model.classifier.fc6.weight, fc6[::4][:, :, ::3, ::3])
    fc7 = state["classifier.3.weight"]
    torch.testing.assert_close(model.classifier.fc7.weight[:, :, 0, 0], fc7[::4, ::4])
    torch.testing.assert_close(model.backbone.conv5_3.weight, state["features.28.weight"])


def test_segnet_pretrained_encoder_from_vgg16_bn(monkeypatch):
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    for m in features.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics to copy
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    monkeypatch.setattr("segbench.models.segnet.vgg16_imagenet_state_dict", lambda batch_norm: state)
    model = segbench.build_model("segnet", 11, pretrained=True)
    last_conv, last_bn = model.encoder[4].convs[6], model.encoder[4].convs[7]
    torch.testing.assert_close(last_conv.weight, state["features.40.weight"])
    torch.testing.assert_close(last_bn.running_var, state["features.41.running_var"])


@pytest.mark.parametrize("model_class, weights", [
    (DeepLabV1, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    (SegNet, torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1),
    (FCN, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
])
def test_offline_pretrained_error_names_file_and_cache(monkeypatch, tmp_path, model_class, weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # FCN allocates 134M parameters before loading; skip that cost on the meta device.
    with pytest.raises(WeightsNotAvailableError) as err, torch.device("meta"):
        model_class(21, pretrained=True)
    message = str(err.value)
    assert os.path.basename(weights.url) in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "model.pretrained=false" in message


@pytest.mark.parametrize("model_class", [FCN, SegNet, DeepLabV1])
def test_narrow_pretrained_is_a_user_error(model_class):
    with pytest.raises(SegbenchError, match="base_channels=64"):
        model_class(21, base_channels=8, pretrained=True)


def test_unet_has_no_pretrained_weights():
    with pytest.raises(WeightsNotAvailableError, match="from scratch"):
        UNet(2, pretrained=True)


# --------------------------------------------------------------------------------------
# SegNet's unpooling
# --------------------------------------------------------------------------------------
def test_segnet_unpooling_uses_encoder_argmax_positions():
    """Every decoder stage's unpooled map is non-zero only where the matching encoder
    pool found its maximum, and equals unpooling with independently computed indices."""
    model = segbench.build_model("segnet", 3, base_channels=8, pretrained=False).eval()
    pre_pool, unpool_in, unpool_out = {}, {}, {}
    hooks = []
    for s, stage in enumerate(model.encoder):
        hooks.append(stage.pool.register_forward_pre_hook(lambda m, a, s=s: pre_pool.__setitem__(s, a[0])))
    for s, stage in zip(range(4, -1, -1), model.decoder):  # decoder runs deepest first
        def grab(m, args, out, s=s):
            unpool_in[s], unpool_out[s] = args[0], out
        hooks.append(stage.unpool.register_forward_hook(grab))
    with torch.no_grad():
        model(torch.randn(1, 3, 45, 61))  # odd sizes: ceil-mode pooling and output_size
    for h in hooks:
        h.remove()
    for s in range(5):
        feat, out = pre_pool[s], unpool_out[s]
        _, idx = F.max_pool2d(feat, 2, 2, ceil_mode=True, return_indices=True)
        expected = F.max_unpool2d(unpool_in[s], idx, 2, 2, output_size=feat.shape[-2:])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        window_max = F.max_pool2d(feat, 2, 2, ceil_mode=True)
        window_max = window_max.repeat_interleave(2, -2).repeat_interleave(2, -1)
        window_max = window_max[..., : feat.shape[-2], : feat.shape[-1]]
        hit = out != 0
        assert hit.any()
        assert torch.equal(feat[hit], window_max[hit])


# --------------------------------------------------------------------------------------
# Learning: one fixed tiny batch, 20 SGD steps
# --------------------------------------------------------------------------------------
# Per network: input size and learning rate. Dropout is off so that the first and last
# losses are comparable; FCN's zero-initialised scorers and fixed bilinear deconvolutions
# learn slowly at this width, hence the modest 5% bar (a broken gradient path stays at
# ln 2 to the fourth decimal). DeepLab needs 64 px for its dilation-12 fc6 to see more
# than padding.
OVERFIT = {"unet": (32, 0.05), "unet_demo": (32, 0.05), "segnet": (32, 0.05),
           "fcn32s": (32, 0.03), "fcn16s": (32, 0.01), "fcn8s": (32, 0.01),
           "deeplabv1": (64, 0.02)}


@pytest.mark.parametrize("key", list(SMALL))
def test_overfits_one_batch(key):
    size, lr = OVERFIT[key]
    no_dropout = {} if key == "segnet" else {"dropout": 0.0}
    model = build(key, num_classes=2, **no_dropout).train()
    # Two classes in 2 x 2 blocks, each visible as a shift of the (noisy) image intensity.
    blocks = torch.randint(0, 2, (2, 1, 2, 2)).float()
    target = F.interpolate(blocks, size=(size, size)).long()
    image = torch.randn(2, 3, size, size) * 0.5 + (2 * target - 1)
    target = target[:, 0]
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(image)["out"], target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.95 * losses[0], [round(v, 4) for v in losses]
