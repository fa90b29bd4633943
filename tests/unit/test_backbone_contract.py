"""The backbone contract (segbench/models/backbones/base.py, segbench/models/base.py) on every
model config of conf/model/ (tests/unit/model_cases.py): feature_info describes the feature maps
the backbone really returns, set_output_stride really changes the stride where the network
supports it (and says no where it does not), gradient checkpointing changes no number, and the
state dicts and parameter counts are those of the code before the contract existed.

The snapshot (tests/unit/data/state_dict_keys.json) is regenerated, after a change that renames
or reshapes parameters on purpose (old checkpoints will no longer load: say so in the change), with

    python -m tests.unit.test_backbone_contract --regenerate

from the repository root; review its diff like code. A new entry of tests/unit/model_cases.py
needs it too (the snapshot test of that case fails until then).
"""
import argparse
import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

import segbench
from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone
from segbench.models.base import BackboneModel
from tests.unit.model_cases import CASES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # paper-width trunks on tiny inputs
SNAPSHOT_FILE = Path(__file__).parent / "data" / "state_dict_keys.json"
SNAPSHOT = json.loads(SNAPSHOT_FILE.read_text())
#: Networks trained at one output stride and evaluated at another (DeepLab v3 §4.1, v3+ §4).
DILATABLE = {"deeplabv3", "deeplabv3plus"}
WITHOUT_BACKBONE = {"segnet", "segnet_basic", "unet", "unet_small"}


def build(case_id: str, device=None):
    name, overrides = CASES[case_id]
    torch.manual_seed(0)
    if device is None:
        return segbench.build_model(name, 5, **overrides)
    with torch.device(device):
        return segbench.build_model(name, 5, **overrides)


def snapshot(case_id: str) -> dict:
    """What the snapshot file keeps of a case: key count, parameter count, the first and last
    keys, and a digest of every "key shape" line (built on the meta device: no memory, no init)."""
    model = build(case_id, "meta")
    state = model.state_dict()
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    return {"first": list(state)[:3], "keys": len(state), "last": list(state)[-3:],
            "parameters": sum(p.numel() for p in model.parameters()),
            "sha256": hashlib.sha256(lines.encode()).hexdigest()}


@pytest.mark.parametrize("case_id", list(CASES))
def test_state_dict_keys_shapes_and_parameter_counts_are_unchanged(case_id):
    """Checkpoints, init_from and pretrained loading match tensors by these names."""
    now, before = snapshot(case_id), SNAPSHOT[case_id]
    assert (now["keys"], now["parameters"]) == (before["keys"], before["parameters"])
    assert now["first"] == before["first"] and now["last"] == before["last"]
    assert now["sha256"] == before["sha256"]


def measured_strides(backbone: Backbone, small: int = 32, large: int = 64) -> dict[str, tuple[int, int]]:
    """(channels, stride) of each returned map; the stride from how much the map grows when the
    input grows by ``large - small`` (robust to FCN's 100 px padding and Caffe's ceil pooling)."""
    with torch.no_grad():
        a, b = (backbone(torch.randn(1, 3, s, s)) for s in (small, large))
    assert a.keys() == b.keys()
    return {k: (a[k].shape[1], (large - small) // (b[k].shape[-1] - a[k].shape[-1])) for k in a}


BACKBONE_CASES = [c for c in CASES if CASES[c][0] not in WITHOUT_BACKBONE]


@pytest.fixture(scope="module", params=BACKBONE_CASES)
def backbone_case(request):
    """One model per case, shared by the two tests below, which pytest runs case by case: one
    paper-width trunk alive at a time, built (random init: most of the cost) once instead of
    once per test. The feature-map test leaves it as built (eval mode, its stride restored);
    the checkpointing test, last, trains it."""
    return request.param, build(request.param)


def test_feature_info_matches_the_feature_maps_and_output_stride_changes_where_supported(backbone_case):
    case_id, model = backbone_case
    model.eval()
    assert isinstance(model, BackboneModel) and isinstance(model.backbone, Backbone)
    backbone = model.backbone
    info = {f.name: (f.channels, f.stride) for f in backbone.feature_info}
    assert measured_strides(backbone) == info
    assert info["out"][1] == backbone.output_stride
    if CASES[case_id][0] in DILATABLE:
        trained = model.output_stride
        model.set_output_stride(8)
        info8 = {f.name: (f.channels, f.stride) for f in backbone.feature_info}
        assert model.output_stride == 8 and info8["out"] == (info["out"][0], 8)
        assert measured_strides(backbone) == info8
        model.set_output_stride(trained)
        assert measured_strides(backbone) == info
    else:
        model.set_output_stride(model.output_stride)  # its own stride is fine
        with pytest.raises(SegbenchError, match="fixed output stride"):
            model.set_output_stride(2 * model.output_stride)


def training_step(model, images, seed=1):
    torch.manual_seed(seed)  # the same dropout masks in both runs
    outputs = model(images)
    loss = sum(v.float().square().mean() for k, v in outputs.items() if k in ("out", "aux"))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return outputs, grads, {k: v.clone() for k, v in model.state_dict().items()}


def test_grad_checkpointing_gives_the_same_outputs_gradients_and_bn_statistics(backbone_case):
    _, plain = backbone_case
    plain.train()
    checkpointed = copy.deepcopy(plain)  # the same weights and BN statistics
    checkpointed.set_grad_checkpointing()
    calls = []  # a first unit of the trunk runs twice with checkpointing: forward, then recomputation
    unit = next(m for m in checkpointed.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    unit.register_forward_hook(lambda *_: calls.append(1))
    images = torch.randn(2, 3, 32, 32)
    out_a, grads_a, state_a = training_step(plain, images)
    out_b, grads_b, state_b = training_step(checkpointed, images)
    assert len(calls) == 2
    assert out_a.keys() == out_b.keys() and all(torch.equal(out_a[k], out_b[k]) for k in ("out",))
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # BN running statistics moved once, not twice
        assert torch.equal(state_a[key], state_b[key]), key
    with torch.no_grad():  # in eval / no-grad nothing is recomputed and the switch is harmless
        checkpointed.eval()(images)
    assert len(calls) == 3


@pytest.mark.parametrize("case_id", sorted(c for c in CASES if CASES[c][0] in WITHOUT_BACKBONE))
def test_networks_without_a_backbone_refuse_checkpointing_with_one_message(case_id):
    model = build(case_id)
    with pytest.raises(SegbenchError, match="needs a model with a backbone"):
        model.set_grad_checkpointing()
    model.set_grad_checkpointing(False)  # switching it off is always fine


def test_trainer_grad_checkpoint_switches_the_backbone_on(tiny_cfg, tmp_path):
    """trainer.grad_checkpoint=true reaches the trunk through the model's own method."""
    from segbench.engine.trainer import Trainer

    cfg = tiny_cfg("model=deeplabv1", "model.base_channels=4", "model.fc_channels=8", "trainer.grad_checkpoint=true")
    assert Trainer(cfg, tmp_path / "v1").model.backbone.grad_checkpointing is True
    with pytest.raises(SegbenchError, match="needs a model with a backbone"):
        Trainer(tiny_cfg("model=unet_small", "trainer.grad_checkpoint=true"), tmp_path / "unet")


def regenerate() -> None:
    """Rewrite the snapshot file from the current code, every case of tests/unit/model_cases.py."""
    data = {case_id: snapshot(case_id) for case_id in CASES}
    SNAPSHOT_FILE.write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"wrote {SNAPSHOT_FILE} ({len(data)} cases)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rewrite the state-dict snapshot file")
    if parser.parse_args().regenerate:
        regenerate()
    else:
        parser.print_help()
