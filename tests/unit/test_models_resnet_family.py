"""PSPNet, DeepLab v2 / v3 / v3+ and their ResNet / Xception backbones.

Functional checks use ResNet-50 and tiny inputs with random weights. Parameter counts build
the paper-size networks on the meta device (no memory, no init cost) and compare them with
torchvision's and timm's own models wherever the architecture is the same; ``pytest -s``
prints the table. Nothing here touches the network: pretrained loading is tested offline by
making the download functions raise.
"""
from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

import segbench
from segbench.app.smoke import small_model
from segbench.errors import SegbenchError, WeightsNotAvailableError
from segbench.models.backbones.resnet import ResNetBackbone
from segbench.models.backbones.xception import XceptionBackbone

NUM_CLASSES = 4
VOC = 21

#: key -> (config name, overrides, module receiving the backbone features, its output stride); each
#: network is its config's small variant (the ``smoke:`` block: ResNet-50 for ResNet-101/152) plus the
#: overrides given here
NETWORKS = {
    "pspnet": ("pspnet", small_model("pspnet"), "ppm", 8),
    "deeplabv2": ("deeplabv2", {**small_model("deeplabv2"), "freeze_bn": False}, "aspp", 8),
    "deeplabv2-vgg16": ("deeplabv2", {**small_model("deeplabv2"), "backbone": "vgg16"}, "aspp", 8),
    "deeplabv3": ("deeplabv3", small_model("deeplabv3"), "aspp", 16),
    "deeplabv3plus-resnet": ("deeplabv3plus", {**small_model("deeplabv3plus"), "backbone": "resnet50"}, "aspp", 16),
    "deeplabv3plus-xception": ("deeplabv3plus", small_model("deeplabv3plus"), "aspp", 16),
}
HAS_AUX = {"pspnet"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny (2x3x32x32): a second intra-op thread gains little, and on a
    shared 2-core machine OpenMP's spin-waiting made the training tests 3-5x slower (measured:
    the DeepLab v2 VGG16 loss test, 23 s with one thread vs 140 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(NETWORKS))
def net(request):
    """One model per network, shared by the tests below (pytest groups them by param, so a
    single model is alive at a time). The loss test, defined last, trains it."""
    torch.manual_seed(0)
    name, overrides, head, stride = NETWORKS[request.param]
    return request.param, segbench.build_model(name, NUM_CLASSES, **overrides), head, stride


def head_input_size(model, head: str, x: torch.Tensor) -> tuple[int, int]:
    """Spatial size of the features entering the head, measured with a forward hook."""
    seen = []
    handle = getattr(model, head).register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape[-2:]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return tuple(seen[0])


# --------------------------------------------------------------------------------------
# Output contract and output stride
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(33, 45), (64, 64)])
def test_output_at_input_resolution_and_aux_only_in_training(net, size):
    key, model, _, _ = net
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model.train()(x)
        assert out["out"].shape == (2, NUM_CLASSES, *size)
        assert ("aux" in out) == (key in HAS_AUX)
        if "aux" in out:
            assert out["aux"].shape == (2, NUM_CLASSES, *size)
        assert set(model.eval()(x)) == {"out"}


def test_feature_output_stride(net):
    """An (8k+1)-sized input, as the papers' crops (321, 473, 513): every trunk then gives
    (size - 1) / stride + 1 (the Caffe VGG16 rounds its pools up, the ResNets down)."""
    key, model, head, stride = net
    model.eval()
    x = torch.randn(1, 3, 65, 97)
    assert head_input_size(model, head, x) == (64 // stride + 1, 96 // stride + 1)
    if stride == 16:  # DeepLab v3/v3+: evaluate at OS 8 with the same weights
        with torch.no_grad():
            before = model(x)["out"]
        model.set_output_stride(8)
        try:
            assert head_input_size(model, head, x) == (9, 13)
            assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [12, 24, 36]
        finally:
            model.set_output_stride(16)
        assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [6, 12, 18]
        with torch.no_grad():
            torch.testing.assert_close(model(x)["out"], before)


def test_output_stride_from_config():
    """Shapes only: on the meta device (no weights allocated or initialised)."""
    with torch.device("meta"):
        model = segbench.build_model("deeplabv3", NUM_CLASSES, backbone="resnet50", output_stride=8).eval()
        assert head_input_size(model, "aspp", torch.randn(1, 3, 65, 97)) == (9, 13)
    assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [12, 24, 36]


def test_resnet_dilation_and_multi_grid():
    with torch.device("meta"):
        trunk = ResNetBackbone("resnet101", output_stride=16, multi_grid=(1, 2, 4))
    rates = lambda layer: [block.conv2.dilation[0] for block in layer]  # noqa: E731
    assert rates(trunk.layer3) == [1] * 23 and rates(trunk.layer4) == [2, 4, 8]
    assert trunk.layer4[0].conv2.stride == (1, 1) and trunk.layer3[0].conv2.stride == (2, 2)
    trunk.set_output_stride(8)
    assert rates(trunk.layer3) == [2] * 23 and rates(trunk.layer4) == [4, 8, 16]
    assert trunk.layer3[0].conv2.stride == (1, 1) and trunk.layer3[0].downsample[0].stride == (1, 1)
    assert all(block.conv2.padding == block.conv2.dilation for block in trunk.layer4)
    with pytest.raises(SegbenchError, match="output_stride"):
        trunk.set_output_stride(4)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_xception_in_place_dilation_matches_timm(output_stride):
    """Our re-dilation (for OS 16 -> 8 at eval) equals timm's build-time ``output_stride``."""
    import timm

    with torch.device("meta"):
        ours = XceptionBackbone(output_stride=32)
        ours.set_output_stride(output_stride)
        ref = timm.create_model("xception65", output_stride=output_stride)
    geometry = lambda m: {  # noqa: E731
        n: (c.stride, c.dilation, c.padding) for n, c in m.blocks.named_modules() if isinstance(c, torch.nn.Conv2d)
    }
    assert geometry(ours) == geometry(ref)


def test_xception_low_level_feature_is_the_tf_endpoint():
    """The decoder reads entry block 2's second separable conv before its ReLU (TF
    ``separable_conv2_pointwise``); timm's stride-4 feature is the same map after the ReLU."""
    import timm

    ours = XceptionBackbone(output_stride=16).eval()
    ref = timm.create_model("xception65", output_stride=16).eval()
    ref.load_state_dict(ours.state_dict(), strict=False)  # everything but the classifier
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        low = ours(x)["low"]
        ref_low = ref.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    assert low.shape == (1, 256, 17, 17)
    assert (low < 0).any()
    torch.testing.assert_close(low.relu(), ref_low)


def test_deeplabv2_frozen_bn_and_multi_scale_inputs():
    """Module flags and output shapes only: on the meta device (no weights allocated or initialised)."""
    with torch.device("meta"):
        model = segbench.build_model("deeplabv2", NUM_CLASSES, backbone="resnet50", msc_scales=[1.0, 0.75, 0.5])
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training or bn.weight.requires_grad for bn in bns)
    assert all(b.weight.requires_grad for b in model.aspp.branches)
    with torch.no_grad(), torch.device("meta"):
        out = model(torch.randn(2, 3, 33, 45))
        assert set(out) == {"out", "msc"} and out["out"].shape == (2, NUM_CLASSES, 33, 45)
        assert [m.shape for m in out["msc"]] == [(2, NUM_CLASSES, 33, 45)] * 3  # one per scale, training only
        assert set(model.eval()(torch.randn(1, 3, 33, 45))) == {"out"}


# --------------------------------------------------------------------------------------
# Parameter counts at the papers' widths (meta device: shapes only)
# --------------------------------------------------------------------------------------
def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin: int, cout: int, k: int = 1, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def conv_bn(cin: int, cout: int, k: int = 1) -> int:
    return conv(cin, cout, k) + 2 * cout


def sep_conv_bn(cin: int, cout: int) -> int:
    return cin * 9 + 2 * cin + cin * cout + 2 * cout


def aspp(separable: bool) -> int:
    atrous = sep_conv_bn(2048, 256) if separable else conv_bn(2048, 256, 3)
    return 2 * conv_bn(2048, 256) + 3 * atrous + conv_bn(5 * 256, 256)


def v3plus_decoder(separable: bool) -> int:
    refine = sep_conv_bn(304, 256) + sep_conv_bn(256, 256) if separable else conv_bn(304, 256, 3) + conv_bn(256, 256, 3)
    return conv_bn(256, 48) + refine


def test_parameter_counts_match_reference_implementations():
    import timm
    from torchvision.models import segmentation as tvseg

    tv_meta = tvseg.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1.meta["num_params"]
    classifier = conv(256, VOC, 1, bias=True)
    # The paper's heads vs torchvision's: PSPNet's final 3x3 conv reads 4096 ch (features +
    # PPM) where torchvision's FCNHead reads 2048, plus the PPM's four 1x1 conv + BN; the
    # deep stem (3x3 64-64-128 instead of 7x7 64) and layer1's wider input add 123,776.
    ppm_extra = 4 * conv_bn(2048, 512) + conv(2048, 512, 3)
    deep_stem_extra = (conv_bn(3, 64, 3) + conv_bn(64, 64, 3) + conv_bn(64, 128, 3) - conv_bn(3, 64, 7)
                       + conv(128, 64) - conv(64, 64) + conv(128, 256) - conv(64, 256))
    # torchvision's DeepLabHead adds a 3x3 conv 256->256 + BN after ASPP that v3 does not have.
    tv_v3_extra_conv = conv_bn(256, 256, 3)

    with torch.device("meta"):
        tv_r101 = n_params(torchvision.models.resnet101()) - conv(2048, 1000, 1, bias=True)
        tv_r50 = n_params(torchvision.models.resnet50()) - conv(2048, 1000, 1, bias=True)
        timm_r101s = n_params(timm.create_model("resnet101s")) - conv(2048, 1000, 1, bias=True)
        timm_x65 = n_params(timm.create_model("xception65")) - conv(2048, 1000, 1, bias=True)
        tv_vgg16_convs = n_params(torchvision.models.vgg16().features)
        tv_fcn101_aux = n_params(tvseg.fcn_resnet101(num_classes=VOC, aux_loss=True, weights_backbone=None))
        tv_fcn50_aux = n_params(tvseg.fcn_resnet50(num_classes=VOC, aux_loss=True, weights_backbone=None))
        tv_v3_aux = n_params(tvseg.deeplabv3_resnet101(num_classes=VOC, aux_loss=True, weights_backbone=None))
        tv_v3 = n_params(tvseg.deeplabv3_resnet101(num_classes=VOC, aux_loss=False, weights_backbone=None))
        vgg_branch = conv(512, 1024, 3, bias=True) + conv(1024, 1024, 1, bias=True) + conv(1024, VOC, 1, bias=True)
        rows = [  # (network, ours, expected, how the expectation is derived)
            ("ResNet-101 trunk (7x7 stem)", n_params(ResNetBackbone("resnet101")), tv_r101,
             "torchvision resnet101 - fc"),
            ("ResNet-101 trunk (deep stem)", n_params(ResNetBackbone("resnet101", deep_stem=True)), timm_r101s,
             "timm resnet101s - fc"),
            ("Xception-65 trunk", n_params(XceptionBackbone()), timm_x65, "timm xception65 - fc"),
            ("PSPNet R-101 deep stem + aux", n_params(segbench.build_model("pspnet", VOC)),
             tv_fcn101_aux + ppm_extra + deep_stem_extra, "tv fcn_resnet101(aux) + PPM + 3x3 in 4096 + deep stem"),
            ("PSPNet R-101 7x7 stem + aux", n_params(segbench.build_model("pspnet", VOC, deep_stem=False)),
             tv_fcn101_aux + ppm_extra, "tv fcn_resnet101(aux) + PPM + 3x3 in 4096"),
            ("PSPNet R-50 deep stem + aux", n_params(segbench.build_model("pspnet", VOC, backbone="resnet50")),
             tv_fcn50_aux + ppm_extra + deep_stem_extra, "tv fcn_resnet50(aux) + PPM + 3x3 in 4096 + deep stem"),
            ("DeepLab v2 R-101 ASPP-L", n_params(segbench.build_model("deeplabv2", VOC)),
             tv_r101 + 4 * conv(2048, VOC, 3, bias=True), "tv resnet101 - fc + 4 x 3x3 2048->21"),
            ("DeepLab v2 VGG16 ASPP-L", n_params(segbench.build_model("deeplabv2", VOC, backbone="vgg16")),
             tv_vgg16_convs + 4 * vgg_branch, "tv vgg16.features + 4 x (fc6 3x3 1024, fc7, fc8)"),
            ("DeepLab v3 R-101", n_params(segbench.build_model("deeplabv3", VOC)),
             tv_v3 - tv_v3_extra_conv, "tv deeplabv3_resnet101(no aux) - 3x3 256 conv+BN"),
            ("DeepLab v3+ R-101", n_params(segbench.build_model("deeplabv3plus", VOC, backbone="resnet101")),
             tv_r101 + aspp(False) + v3plus_decoder(False) + classifier, "tv resnet101 - fc + ASPP + decoder"),
            ("DeepLab v3+ X-65 (sep. conv)", n_params(segbench.build_model("deeplabv3plus", VOC)),
             timm_x65 + aspp(True) + v3plus_decoder(True) + classifier, "timm xception65 - fc + sep. ASPP + decoder"),
        ]
    print("\n| network (21 classes) | segbench | expected | diff | expected from |")
    print("|---|---:|---:|---:|---|")
    for name, ours, expected, how in rows:
        print(f"| {name} | {ours:,} | {expected:,} | {ours - expected:+,} | {how} |")
    print(f"torchvision deeplabv3_resnet101: aux {tv_v3_aux:,} (weights meta {tv_meta:,}), no aux {tv_v3:,}")
    assert tv_v3_aux == tv_meta  # the builder we compare with is the published model
    for name, ours, expected, _ in rows:
        assert abs(ours - expected) <= 0.01 * expected, name
        assert ours == expected, name  # in fact exact: same layers, same widths
    psp101 = rows[3][1]
    assert abs(psp101 - 68e6) < 0.01 * 68e6  # recipes.md §4.1 / §9: "≈68M"


# --------------------------------------------------------------------------------------
# User errors: unknown backbone, pretrained weights offline
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, bad, valid", [
    ("pspnet", "resnet18", "resnet101"),
    ("deeplabv2", "resnet34", "vgg16"),
    ("deeplabv3", "xception65", "resnet101"),
    ("deeplabv3plus", "xception71", "xception65"),
])
def test_unknown_backbone_lists_valid_ones(name, bad, valid):
    with pytest.raises(SegbenchError, match=f"unknown backbone '{bad}'.*{valid}"):
        segbench.build_model(name, NUM_CLASSES, backbone=bad)


def _offline(*args, **kwargs):
    raise URLError("network is unreachable (test)")


def test_pretrained_torchvision_offline_names_the_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", os.path.basename(url))
    with pytest.raises(WeightsNotAvailableError) as info:
        segbench.build_model("deeplabv3", NUM_CLASSES, backbone="resnet50", pretrained=True)
    assert expected in str(info.value) and url in str(info.value)


@pytest.mark.parametrize("name, overrides, repo", [
    ("pspnet", {"backbone": "resnet50"}, "timm/resnet50s.gluon_in1k"),
    ("deeplabv3plus", {"backbone": "xception65"}, "timm/xception65.tf_in1k"),
])
def test_pretrained_timm_offline_names_the_hub_file(monkeypatch, name, overrides, repo):
    import timm.models._hub as timm_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline_hub(*args, **kwargs):
        raise LocalEntryNotFoundError("offline (test)")

    monkeypatch.setattr(timm_hub, "hf_hub_download", offline_hub)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)  # timm's URL fallback
    with pytest.raises(WeightsNotAvailableError) as info:
        segbench.build_model(name, NUM_CLASSES, pretrained=True, **overrides)
    message = str(info.value)
    assert repo in message and "model.safetensors" in message and "models--timm--" in message


# --------------------------------------------------------------------------------------
# Training signal (last: it trains the shared models)
# --------------------------------------------------------------------------------------
#: SGD learning rate and gradient clipping per network. DeepLab v2's summed score layers need
#: the paper's small rates; its VGG16 trunk has no BN and, from random weights, needs a larger
#: rate, which clipping keeps from diverging.
TRAIN = {"deeplabv2": (1e-3, None), "deeplabv2-vgg16": (0.02, 1.0)}
#: v3+ with ResNet adds nothing the Xception variant (decoder, ASPP) and DeepLab v3 (the
#: ResNet encoder) do not train already, and costs ~20 s: left out to keep the file fast.
NOT_TRAINED = {"deeplabv3plus-resnet"}
#: SGD steps per network. A step costs what the paper-width network's parameters cost (grads and
#: momentum for 40-70 M of them), so each trains only as long as it needs to show learning: the
#: BN networks fall below 0.9x their first loss within 3 steps (measured, losses relative to the
#: first: PSPNet 0.22, DeepLab v2 0.84, v3 0.93 at step 2; 0.10, 0.33, 0.38 at step 7), while the
#: BN-free VGG16 trunk from random weights needs ~15 (0.91 at step 14, 0.27 at step 19).
STEPS = {"deeplabv2-vgg16": 20}


def test_loss_decreases_on_a_fixed_batch(net):
    key, model, _, _ = net
    if key in NOT_TRAINED:
        pytest.skip("covered by deeplabv3plus-xception and deeplabv3")
    lr, clip = TRAIN.get(key, (0.01, None))
    torch.manual_seed(0)
    size = 32
    x = torch.randn(2, 3, size, size)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = ((rows >= size // 2).long() * 2 + (cols >= size // 2).long()).expand(2, -1, -1)  # quadrants
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(STEPS.get(key, 8)):
        out = model(x)
        loss = F.cross_entropy(out["out"], target)
        if "aux" in out:
            loss = loss + 0.4 * F.cross_entropy(out["aux"], target)
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.9 * losses[0], [round(v, 3) for v in losses]
