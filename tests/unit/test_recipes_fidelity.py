"""The recipes follow the authors' code: per-layer lr / decay by name, FCN staging, DeepLab v2's
four-term MSC loss, TF's BN momentum, the CRF defaults, and a README table generated from the files."""

import pytest
import torch
import torch.nn.functional as F

from segbench.api import available
from segbench.engine import build
from segbench.engine.optim import build_optimizer
from segbench.models.backbones.base import Backbone, FeatureInfo
from tests.conftest import compose_train

EXPERIMENTS = available("experiment")

# name -> (lr multiplier, weight-decay multiplier), as the reference solvers set them.
FCN = {"score_fr.bias": (2, 0), "backbone.stage1.conv1_1.bias": (2, 0), "score_fr.weight": (1, 1),
       "backbone.stage1.conv1_1.weight": (1, 1), "fc6.weight": (1, 1)}
V1 = {"classifier.fc8.weight": (10, 1), "classifier.fc8.bias": (20, 0), "classifier.fc6.bias": (2, 0),
      "classifier.fc6.weight": (1, 1), "backbone.conv1_1.weight": (1, 1)}
V2_VGG = {"aspp.branches.0.fc8.weight": (10, 1), "aspp.branches.3.fc8.bias": (20, 0),
          "aspp.branches.1.fc6.weight": (1, 1), "aspp.branches.1.fc7.bias": (2, 0)}
V2_RESNET = {"aspp.branches.0.weight": (10, 1), "aspp.branches.3.bias": (20, 0), "backbone.layer4.2.conv3.weight": (1, 1)}
V3 = {"backbone.layer1.0.bn1.weight": (1, 0), "backbone.layer1.0.bn1.bias": (1, 0), "classifier.bias": (1, 0),
      "classifier.weight": (1, 1), "backbone.layer1.0.conv1.weight": (1, 1), "aspp.project.0.1.weight": (1, 0)}
V3_XCEPTION = {"backbone.stem.0.bn.weight": (1, 0), "backbone.stem.0.conv.weight": (1, 1), "classifier.bias": (1, 0),
               "classifier.weight": (1, 1)}
PSP = {"backbone.layer1.0.conv1.weight": (1, 1), "aux.4.weight": (10, 1), "aux.4.bias": (10, 1)}
EXPECTED = {
    "fcn": FCN, "deeplabv1": V1, "deeplabv2_vgg16": V2_VGG, "deeplabv2_r101": V2_RESNET,
    "deeplabv3_r101": V3, "deeplabv3plus_r101": V3, "deeplabv3plus_xception65": V3_XCEPTION, "pspnet": PSP,
}


def expected_for(name: str) -> dict:
    for prefix, table in EXPECTED.items():
        if name.startswith(prefix):
            return table
    return {}  # every other recipe: one group, x1 / x1


def groups_by_name(cfg, model) -> dict[str, tuple[float, float]]:
    optimizer = build_optimizer(cfg, model)
    base_lr, base_wd = float(cfg.optim.lr), float(cfg.optim.weight_decay)
    owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    table = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = owner[id(param)]
            assert group["lr"] == pytest.approx(base_lr * group["lr_mult"])
            assert group["weight_decay"] == pytest.approx(base_wd * group["weight_decay_mult"])
            table[name] = (group["lr_mult"], group["weight_decay_mult"])
    return table


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_param_groups_follow_the_reference_solver(name):
    cfg = compose_train([f"experiment={name}", "model.pretrained=false"])
    with torch.device("meta"):  # full-size, no memory, no weights
        model = build.build_model(cfg)
    table = groups_by_name(cfg, model)
    expected = expected_for(name)
    for param_name, (lr_mult, wd_mult) in expected.items():
        assert table[param_name] == (pytest.approx(lr_mult), pytest.approx(wd_mult)), param_name
    if not expected:
        assert set(table.values()) == {(1.0, 1.0)}, f"{name}: unexpected multipliers"
    assert "head_lr_mult" not in cfg.optim or name == "segnet_basic_camvid"
    # reproduction policy: fp32 as the papers (bf16 autocast only when asked for)
    assert cfg.trainer.precision == "fp32" or name == "segnet_basic_camvid"
    if name.startswith("deeplabv3"):  # TF batch_norm_decay 0.9997 -> PyTorch momentum 3e-4
        momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        assert len(momenta) == 1 and momenta.pop() == pytest.approx(1 - 0.9997)
    if "xception" in name:  # TF regularize_depthwise=False / split_separable_conv2d: no decay on depthwise kernels
        for conv_name, conv in model.named_modules():
            if isinstance(conv, torch.nn.Conv2d):
                depthwise = 1 < conv.groups == conv.in_channels
                assert table[conv_name + ".weight"][1] == (0 if depthwise else 1), conv_name


def test_param_rules_first_match_wins_and_legacy_head_mult_is_a_rule(tiny_cfg):
    cfg = tiny_cfg("model=deeplabv1", "model.fc_channels=8", "optim=sgd", "optim.lr=0.1", "optim.weight_decay=0.01",
                   "+optim.param_rules=[{pattern: 'fc8', lr_mult: 10}, {pattern: 'bias$', lr_mult: 3, weight_decay_mult: 0}]")
    model = build.build_model(cfg)
    table = groups_by_name(cfg, model)
    assert table["classifier.fc8.bias"] == (10, 1)  # the first rule matched, not the bias rule
    assert table["classifier.fc7.bias"] == (3, 0)
    assert table["backbone.conv1_1.weight"] == (1, 1)
    optimizer = build_optimizer(cfg, model)
    assert optimizer.param_groups[0]["lr_mult"] == 1.0  # the trainer logs group 0 as "the" lr
    legacy = tiny_cfg("model=deeplabv1", "model.fc_channels=8", "optim=sgd", "+optim.head_lr_mult=10")
    assert groups_by_name(legacy, model)["classifier.fc6.weight"][0] == pytest.approx(10)


def test_scheduler_keeps_each_groups_multiplier(tiny_cfg):
    from segbench.engine.schedule import poly

    cfg = tiny_cfg("model=deeplabv1", "model.fc_channels=8", "optim=sgd", "optim.lr=0.1",
                   "+optim.param_rules=[{pattern: 'fc8', lr_mult: 10}]")
    optimizer = build_optimizer(cfg, build.build_model(cfg))
    scheduler = poly(optimizer, max_iters=10, power=1.0)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == [pytest.approx(0.05), pytest.approx(0.5)]


def test_bad_param_rule_is_one_user_error(tiny_cfg):
    from segbench.errors import SegbenchError

    cfg = tiny_cfg("optim=sgd", "+optim.param_rules=[{pattern: '(', lr_mult: 2}]")
    with pytest.raises(SegbenchError, match="bad regex"):
        build_optimizer(cfg, build.build_model(cfg))


class TinyTrunk(Backbone):
    """Stands in for the dilated ResNet (stride 8, 8 channels) so the test runs in milliseconds."""

    output_stride = 8
    feature_info = (FeatureInfo("out", 8, 8),)

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=8, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


def test_deeplabv2_msc_training_loss_has_four_terms(monkeypatch):
    """deeplab-pytorch main.py: CE on the 1, 0.75 and 0.5 scale logits plus the max-fused one."""
    import math

    import segbench
    from segbench.engine.losses import SegmentationLoss
    from segbench.models import deeplabv2
    from segbench.models.deeplabv2 import upsample

    monkeypatch.setattr(deeplabv2, "ResNetBackbone", TinyTrunk)
    torch.manual_seed(0)
    scales = [1.0, 0.75, 0.5]
    model = segbench.build_model("deeplabv2", 3, backbone="resnet50", msc_scales=scales).train()
    x = torch.randn(1, 3, 33, 45)
    y = torch.randint(0, 3, (1, 33, 45))
    y[0, :4] = 255
    with torch.no_grad():
        out = model(x)
        per_scale = [model.scores(x if s == 1 else upsample(x, (math.ceil(33 * s), math.ceil(45 * s))))
                     for s in scales]
        fused = torch.stack([upsample(m, per_scale[0].shape[-2:]) for m in per_scale]).amax(0)
        terms = [F.cross_entropy(upsample(m, (33, 45)), y, ignore_index=255) for m in [fused, *per_scale]]
        loss = SegmentationLoss(aux_weight=0.0)(out, y)
    assert len(out["msc"]) == 3
    assert loss.item() == pytest.approx(sum(t.item() for t in terms), rel=1e-5)
    assert loss.item() > 1.5 * terms[0].item()  # really more than the fused term alone


# ---- FCN staged training: model.init_from ------------------------------------------------------
def tiny_fcn(stride: int, seed: int, classes: int = 5):
    import segbench

    torch.manual_seed(seed)
    return segbench.build_model(f"fcn{stride}s", classes, base_channels=4, pretrained=False)


def save_run(tmp_path, model, name="run32"):
    from segbench.engine.checkpoint import save_checkpoint

    run = tmp_path / name
    with torch.no_grad():  # a "trained" 32s net: non-zero score_fr so a copy is visible
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(run / "last.pt", {"model": model.state_dict()})
    return run


def test_init_from_copies_exactly_the_matching_tensors(tmp_path):
    fcn32 = tiny_fcn(32, 0)
    run = save_run(tmp_path, fcn32)
    fcn16 = tiny_fcn(16, 1)
    before = {k: v.clone() for k, v in fcn16.state_dict().items()}
    logged = []
    skipped = build.init_from_run(fcn16, run, log=logged.append)
    # new in 16s: the pool4 scorer and the 2x upsampler; the final upsampler changes shape (x32 -> x16)
    assert set(skipped) == {"score_pool4.weight", "score_pool4.bias", "upscore2.weight", "upscore.weight"}
    assert "score_pool4.weight" in logged[0]
    state32 = fcn32.state_dict()
    for key, value in fcn16.state_dict().items():
        torch.testing.assert_close(value, before[key] if key in skipped else state32[key])
    assert not fcn16.score_pool4.weight.any()  # the new skip still starts at zero (§4.2)


def test_init_from_nothing_matching_is_one_error(tmp_path):
    import segbench
    from segbench.errors import SegbenchError

    run = save_run(tmp_path, segbench.build_model("unet", 5, base_channels=4), "unet")
    with pytest.raises(SegbenchError, match="no tensor"):
        build.init_from_run(tiny_fcn(16, 0), run)


@pytest.mark.parametrize("name,previous", [("fcn16s_vgg16_voc", "fcn32s_vgg16_voc"),
                                           ("fcn8s_vgg16_voc", "fcn16s_vgg16_voc")])
def test_staged_fcn_recipes_follow_the_reference_solvers(name, previous):
    from segbench.errors import SegbenchError

    cfg = compose_train([f"experiment={name}"])
    first = compose_train(["experiment=fcn32s_vgg16_voc"])
    assert cfg.staged_from == previous and cfg.model.at_once is False
    # voc-fcn16s / voc-fcn8s solver.prototxt: base_lr 1e-12 / 1e-14 = the 32s's 1e-10 / 100 per stage
    factor = {"fcn16s_vgg16_voc": 1e-2, "fcn8s_vgg16_voc": 1e-4}[name]
    assert cfg.optim.lr == pytest.approx(first.optim.lr * factor)
    assert cfg.optim.momentum == 0.99 and cfg.trainer.max_iters == 100000
    with pytest.raises(SegbenchError, match="staged"):  # alone, without its previous stage
        build.apply_init_from(tiny_fcn(16, 0), cfg.model)


def test_at_once_recipes_scale_the_skips():
    for name in [e for e in EXPERIMENTS if e.startswith("fcn") and "atonce" in e]:
        cfg = compose_train([f"experiment={name}"])
        assert cfg.model.at_once is True and "staged_from" not in cfg


def test_trainer_applies_init_from(tiny_cfg, tmp_path):
    from segbench.engine.trainer import Trainer

    run = save_run(tmp_path, tiny_fcn(32, 0, classes=6))  # the synthetic set has 6 classes
    cfg = tiny_cfg("model=fcn16s", f"+model.init_from={run}", "trainer.max_iters=1", "trainer.device=cpu")
    trainer = Trainer(cfg, tmp_path / "run16")
    saved = torch.load(run / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(trainer.model.fc6.weight.detach().cpu(), saved["fc6.weight"])


def test_reproduce_chains_the_fcn_stages():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    first, staged, skipped = reproduce.stage_order(["fcn8s_vgg16_voc", "fcn16s_vgg16_voc", "fcn32s_vgg16_voc", "unet_isbi"])
    assert first == ["fcn32s_vgg16_voc", "unet_isbi"] and not skipped
    assert staged == [("fcn16s_vgg16_voc", "fcn32s_vgg16_voc"), ("fcn8s_vgg16_voc", "fcn16s_vgg16_voc")]
    _, staged, skipped = reproduce.stage_order(["fcn16s_vgg16_voc"])
    assert not staged and "fcn32s_vgg16_voc" in skipped["fcn16s_vgg16_voc"]


# ---- the README's recipe table is generated from the experiment files --------------------------
def test_readme_recipe_table_matches_the_experiment_files():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("recipe_table", REPO / "scripts" / "recipe_table.py")
    recipe_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_table)
    readme = (REPO / "README.md").read_text()
    assert recipe_table.replace_in(readme, recipe_table.table()) == readme, (
        "README.md's recipe table is stale: run python scripts/recipe_table.py --write")


def test_deeplabv3plus_resnet_decoder_taps_where_tf_does(monkeypatch):
    """TF feature_extractor.py: block1/unit_2/bottleneck_v1/conv3 = layer1[1]'s BN'd residual branch."""
    import torchvision

    import segbench
    from segbench.models.backbones import resnet

    def short_resnet(name, pretrained):  # torchvision's Bottleneck ResNet, one block per later stage
        return torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [2, 1, 1, 1])

    monkeypatch.setattr(resnet, "torchvision_model", short_resnet)
    torch.manual_seed(0)
    model = segbench.build_model("deeplabv3plus", 3, backbone="resnet50", multi_grid=[1], low_level_tap="tf").eval()
    seen = []
    model.decoder.project.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        model(x)
        b = model.backbone
        h = b.layer1[0](b.stem(x))
        unit = b.layer1[1]
        branch = unit.bn3(unit.conv3(unit.relu(unit.bn2(unit.conv2(unit.relu(unit.bn1(unit.conv1(h))))))))
    torch.testing.assert_close(seen[0], branch)
    assert (seen[0] < 0).any()  # before the residual sum and ReLU, unlike layer1's output


def test_deeplab_loss_on_8x_subsampled_labels_is_the_stride8_loss():
    """v2 §4: ground truth subsampled by 8; for a 33 = 8 * 4 + 1 crop the align_corners upsampling
    leaves the stride-8 logits at every 8th pixel, so the loss equals CE on the network's own map."""
    import segbench
    from segbench.engine.losses import SegmentationLoss

    torch.manual_seed(0)
    model = segbench.build_model("deeplabv1", 4, base_channels=4, fc_channels=8).eval()
    torch.nn.init.normal_(model.classifier.fc8.weight, std=3.0)  # logits far from uniform
    x, y = torch.randn(2, 3, 33, 33), torch.randint(0, 4, (2, 33, 33))
    y[:, :8] = 255
    with torch.no_grad():
        native = model.classifier(model.backbone(x)["out"])  # 5 x 5
        loss = SegmentationLoss(aux_weight=0.0, label_stride=8)(model(x), y)
        full = SegmentationLoss(aux_weight=0.0)(model(x), y)
    assert native.shape[-2:] == (5, 5)
    assert loss.item() == pytest.approx(F.cross_entropy(native, y[:, ::8, ::8], ignore_index=255).item(), rel=1e-5)
    assert loss.item() != pytest.approx(full.item(), rel=1e-3)
    for name in ("deeplabv1_vgg16_voc_aug", "deeplabv1_vgg16_voc_aug_crf", "deeplabv2_vgg16_voc_aug",
                 "deeplabv2_r101_voc_aug"):
        cfg = compose_train([f"experiment={name}"])
        assert cfg.loss.label_stride == 8 and cfg.data.transforms.train.crop_size[0] % 8 == 1


def test_pspnet_voc_rotates_and_blurs_as_semseg():
    """hszhao/semseg tool/train.py: RandRotate([-10, 10], p=0.5) and RandomGaussianBlur (5x5, p=0.5)."""
    from segbench.api import instantiate_unwrapped

    cfg = compose_train(["experiment=pspnet_r101_voc_aug"])
    steps = {type(t).__name__: t for t in instantiate_unwrapped(cfg.data.transforms.train).transforms}
    assert steps["Rotate"].p == 0.5 and tuple(steps["Rotate"].limit) == (-10, 10)
    assert steps["GaussianBlur"].p == 0.5 and tuple(steps["GaussianBlur"].blur_limit) == (5, 5)


def test_deeplab_resnet_recipes_use_multi_grid():
    """v3 §3.2 (Table 3's best, (1, 2, 4)); v3+ builds on it, and Google's resnet_v1_101_beta v3+
    command sets --multi_grid=1,2,4 (tensorflow/tpu models/experimental/deeplab/README.md)."""
    names = [n for n in EXPERIMENTS if n.startswith(("deeplabv3_r101", "deeplabv3plus_r101"))]
    assert len(names) == 4
    for name in names:
        assert list(compose_train([f"experiment={name}"]).model.multi_grid) == [1, 2, 4], name
