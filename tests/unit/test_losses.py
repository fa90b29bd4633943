"""SegmentationLoss: the weighting terms it is configured with all take effect."""
import torch
import torch.nn.functional as F

from segbench.data.weight_map import WeightMaps
from segbench.engine.losses import SegmentationLoss


def test_weight_map_loss_also_applies_class_weights():
    """``loss.class_weights`` with U-Net's ``weight_map``: pixel x weighs
    class_weights[y(x)] * w(x). A flat map (w0=0, no balancing) leaves w(x)=1, so the loss is the
    class-weighted NLL summed over labelled pixels / their count (a hand computation)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    target[0, 0, :3] = 255  # ignored pixels weigh nothing
    class_weights = [1.0, 3.0]
    flat = {"w0": 0.0, "class_balance": False}
    maps = torch.stack([WeightMaps(2, **flat)(t.to(torch.uint8)) for t in target])  # as the loader's workers make them
    loss = SegmentationLoss(class_weights=class_weights, aux_weight=0, weight_map=flat)({"out": logits}, target,
                                                                                        weights=maps)

    nll = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    labelled = target != 255
    w = torch.tensor(class_weights)[target.clamp(max=1)]
    expected = (nll * w * labelled).sum() / labelled.sum()
    assert torch.allclose(loss, expected)
    unweighted = SegmentationLoss(aux_weight=0, weight_map=flat)
    assert not torch.allclose(unweighted({"out": logits}, target, weights=maps), expected)  # the weights matter here
