"""What the engine may call on every segmentation model, so it never asks which one it has.

* ``forward(images) -> {"out": logits at input resolution[, "aux", "msc"]}`` (DESIGN);
* ``output_stride`` -- the stride the paper names the network by: the final score map's before
  the last resize (FCN-8s: 8, DeepLab v1/v2, PSPNet: 8), the encoder's for DeepLab v3/v3+
  (v3+'s decoder always works at 4), 1 for the full-resolution SegNet and U-Net;
* ``set_output_stride(os)`` -- where the architecture is trained at one stride and evaluated at
  another with the same weights (DeepLab v3/v3+, v3 §4.1); elsewhere a
  :class:`~segbench.errors.SegbenchError` for any other stride;
* ``set_grad_checkpointing(enable=True)`` -- recompute the backbone's activations in backward
  (``trainer.grad_checkpoint``); networks without a backbone (SegNet, U-Net) refuse it.
"""
from __future__ import annotations

from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone


class SegmentationModel(nn.Module):
    output_stride: int = 1

    def set_output_stride(self, output_stride: int) -> None:
        if output_stride != self.output_stride:
            raise SegbenchError(
                f"{type(self).__name__} has a fixed output stride ({self.output_stride}); it cannot be "
                f"evaluated at output stride {output_stride} (remove eval_protocol.output_stride)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise SegbenchError(f"trainer.grad_checkpoint=true needs a model with a backbone; "
                                f"{type(self).__name__} has none (set trainer.grad_checkpoint=false)")


class BackboneModel(SegmentationModel):
    """A head on a :class:`~segbench.models.backbones.base.Backbone` held as ``self.backbone``
    (the name every state dict and ``optim.param_rules`` pattern relies on). Today's heads are
    cheap next to their trunks, so checkpointing covers the backbone only."""

    backbone: Backbone

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)
