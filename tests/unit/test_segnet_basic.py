"""SegNet-Basic (SegNet TPAMI 2017 §3.1, Table 1) and its CamVid recipe (§3.2): layer list and
parameter count, unpooling at the encoder's argmax positions, the experiment's composition and model selection by global accuracy."""
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segbench
from segbench.metrics import ConfusionMatrix
from segbench.record import RunRecord
from tests.conftest import compose_train


def test_segnet_basic_layers_and_parameter_count():
    model = segbench.build_model("segnet_basic", 11)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7)] * 8 + [(1, 1)]  # 4 enc + 4 dec, 1x1 classifier
    assert all(c.out_channels == 64 and c.bias is None for c in convs[:-1])  # §3.1: no biases
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8  # BN after every conv
    assert sum(isinstance(m, nn.ReLU) for m in model.decoder.modules()) == 0  # no ReLU in the decoder
    assert sum(isinstance(m, nn.ReLU) for m in model.encoder.modules()) == 4
    # 9,408 + 7 x 200,704 conv weights + 1,024 BN + 715 classifier; Table 1: 1.425M
    assert sum(p.numel() for p in model.parameters()) == 1_416_075
    with_bias = segbench.build_model("segnet_basic", 11, conv_bias=True)  # the Tutorial prototxt
    assert sum(p.numel() for p in with_bias.parameters()) == 1_416_587
    assert abs(1_416_075 - 1.425e6) / 1.425e6 < 0.007


def test_segnet_basic_output_size_and_no_pretrained_weights():
    model = segbench.build_model("segnet_basic", 5, base_channels=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 61))["out"].shape == (1, 5, 45, 61)  # ceil-mode pools
    with pytest.raises(segbench.errors.SegbenchError, match="from scratch"):
        segbench.build_model("segnet_basic", 5, pretrained=True)


def test_segnet_basic_unpools_to_the_encoder_argmax_positions():
    model = segbench.build_model("segnet_basic", 3, base_channels=4).eval()
    pre_pool, unpool_in, unpool_out, hooks = {}, {}, {}, []
    for s, stage in enumerate(model.encoder):
        hooks.append(stage.pool.register_forward_pre_hook(lambda m, a, s=s: pre_pool.__setitem__(s, a[0])))
    for s, stage in zip(range(3, -1, -1), model.decoder):
        def grab(m, args, out, s=s):
            unpool_in[s], unpool_out[s] = args[0], out
        hooks.append(stage.unpool.register_forward_hook(grab))
    with torch.no_grad():
        model(torch.randn(1, 3, 37, 50))
    for h in hooks:
        h.remove()
    for s in range(4):
        feat, out = pre_pool[s], unpool_out[s]
        _, idx = F.max_pool2d(feat, 2, 2, ceil_mode=True, return_indices=True)
        torch.testing.assert_close(out, F.max_unpool2d(unpool_in[s], idx, 2, 2, output_size=feat.shape[-2:]),
                                   rtol=0, atol=0)
        window_max = F.max_pool2d(feat, 2, 2, ceil_mode=True).repeat_interleave(2, -2).repeat_interleave(2, -1)
        window_max = window_max[..., : feat.shape[-2], : feat.shape[-1]]
        hit = out != 0
        assert hit.sum() == idx.numel() - (unpool_in[s] == 0).sum()  # one value per pooling window
        assert torch.equal(feat[hit], window_max[hit])


def test_experiment_composes_the_section_3_2_recipe(tmp_path, monkeypatch):
    import segbench.cli  # noqa: F401  registers the ${class_weights:...} resolver

    weights = [0.5 + i for i in range(11)]
    (tmp_path / "class_weights").mkdir()
    (tmp_path / "class_weights" / "camvid_train.json").write_text(json.dumps({"class_weights": weights}))
    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path))
    monkeypatch.delenv("SEGBENCH_CLASS_WEIGHTS", raising=False)
    cfg = compose_train(["experiment=segnet_basic_camvid"])
    assert cfg.model._target_ == "segbench.models.segnet.SegNetBasic" and cfg.model.pretrained is False
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.schedule.power) == (12, 0.1, 0.9, 0.0)
    assert cfg.data.transforms.train.normalize == cfg.data.transforms.val.normalize == "lcn"
    assert cfg.trainer.select_by == "aAcc" and cfg.eval_protocol.boundary_f1
    assert list(cfg.loss.class_weights) == weights
    assert (cfg.paper.value, cfg.paper.also.aAcc, cfg.paper.also.mAcc, cfg.paper.also.BF) == (47.7, 82.7, 62.0, 35.78)


def _matrix(class0_right: int, class0_as_1: int, class1_right: int, class1_as_0: int) -> ConfusionMatrix:
    m = ConfusionMatrix(6)  # the synthetic set's classes; only 0 and 1 occur
    target = [0] * (class0_right + class0_as_1) + [1] * (class1_right + class1_as_0)
    pred = [0] * class0_right + [1] * class0_as_1 + [1] * class1_right + [0] * class1_as_0
    m.update(torch.tensor(pred), torch.tensor(target))
    return m


@pytest.mark.parametrize("select_by, best_iteration", [("aAcc", 1), ("mIoU", 2)])
def test_best_checkpoint_follows_trainer_select_by(select_by, best_iteration, tiny_cfg, tmp_path, monkeypatch):
    from segbench.engine import trainer as trainer_module

    # validation 1: aAcc 100/110 = 0.91, mIoU (100/110 + 0) / 2 = 0.45
    # validation 2: aAcc 90/110 = 0.82, mIoU (80/100 + 10/30) / 2 = 0.57
    matrices = iter([_matrix(100, 0, 0, 10), _matrix(80, 20, 10, 0)])
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: next(matrices))
    cfg = tiny_cfg("trainer.max_iters=2", "trainer.val_interval=1", f"trainer.select_by={select_by}",
                   "trainer.num_vis=0", "trainer.device=cpu")
    trainer_module.Trainer(cfg, tmp_path).fit()
    assert torch.load(tmp_path / "best.pt", weights_only=False)["iteration"] == best_iteration
    # run.json and the checkpoint name the metric the best value is of (not "best_mIoU")
    best = RunRecord.load(tmp_path).training.summary.best
    value = {"aAcc": 100 / 110, "mIoU": (80 / 100 + 10 / 30) / 2}[select_by]
    assert (best.metric, best.iteration) == (select_by, best_iteration) and best.value == pytest.approx(value)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["best"] == asdict(best)
