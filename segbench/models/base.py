"""What the engine may call on every segmentation model, so it never asks which one it has.

* ``forward(images) -> {"out": logits at input resolution[, "aux", "msc"]}`` (DESIGN);
* ``output_stride`` -- the stride the paper names the network by: the final score map's before
  the last resize (FCN-8s: 8, DeepLab v1/v2, PSPNet: 8), the encoder's for DeepLab v3/v3+
  (v3+'s decoder always works at 4), 1 for the full-resolution SegNet and U-Net;
* ``set_output_stride(os)`` -- where the architecture is trained at one stride and evaluated at
  another with the same weights (DeepLab v3/v3+, v3 §4.1); elsewhere a
  :class:`~segbench.errors.SegbenchError` for any other stride;
* ``aligned_stride`` -- the input sizes the model keeps its training geometry on: a model that
  resizes its stride-``output_stride`` maps with corners aligned (``corner_aligned``, see
  :mod:`segbench.models.blocks`) puts feature j on pixel ``OS*j`` only on inputs of ``k*OS+1``
  pixels, the crops it was trained on; the evaluation protocols pad every input to such a size
  (:mod:`segbench.engine.inference`). ``None``: any size keeps it (FCN crops its own offsets
  after padding by 100, SegNet unpools with its indices, U-Net tiles with overlap);
* ``set_grad_checkpointing(enable=True)`` -- recompute the backbone's activations in backward
  (``trainer.grad_checkpoint``); networks without a backbone (SegNet, U-Net) refuse it.
"""
from __future__ import annotations

from torch import nn

from segbench.errors import SegbenchError
from segbench.models.backbones.base import Backbone


class SegmentationModel(nn.Module):
    output_stride: int = 1
    #: Resizes with :data:`~segbench.models.blocks.ALIGN_CORNERS` from its ``output_stride`` grid
    #: (DeepLab v1/v2/v3/v3+, PSPNet), hence trained on ``k*OS+1`` crops.
    corner_aligned: bool = False

    @property
    def aligned_stride(self) -> int | None:
        """Inputs of ``k * aligned_stride + 1`` pixels put feature j on pixel ``aligned_stride * j``
        as in training; ``None``: every size does. Follows :meth:`set_output_stride`."""
        return self.output_stride if self.corner_aligned else None

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
