#!/usr/bin/env python
"""Does the FCN recipes' lr conversion (reference lr on a summed loss x ~1.75e5 labelled pixels)
survive torchvision's normalised-input VGG16?  ``python scripts/fcn_loss_scale.py``

The reference (fcn.berkeleyvision.org) feeds Caffe's VGG16 BGR images in [0, 255] minus the mean
pixel (104.0, 116.7, 122.7); torchvision's VGG16 takes RGB in [0, 1], minus the ImageNet mean,
divided by its std (~0.226). The same network in the two conventions differs only in conv1_1:
W_caffe = W_tv / (255 * std) (channels reversed), the bias absorbing the two means. This script
builds one FCN-32s, derives its Caffe-convention twin, and measures on random images:

* the loss of both (summed over pixels and per-pixel mean): equal, so the summed -> mean factor
  (the number of labelled pixels P) is the whole conversion for every layer above conv1_1;
* the gradient of every layer in both: equal above conv1_1; conv1_1's weight gradient is
  255 * std ~ 58x larger in the Caffe convention while its weights are 58x smaller, so at the
  same lr its *relative* update is ~3,400x smaller in torchvision's parametrisation.

At initialisation the FCN recipes' loss is exactly ln(21) per pixel in both conventions (the
scoring layers start at zero, §4.1), P * ln(21) summed. Random (He) weights, quarter width: the
equivalence is exact algebra (up to the conv1_1 zero-padding value, which the two means make
differ by < 1 intensity level), so neither the weights nor the width change the figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TV_MEAN, TV_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = torch.tensor([104.00699, 116.66877, 122.67892])  # voc-fcn*/net.py


def caffe_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same FCN for BGR [0, 255] mean-subtracted input: only conv1_1 changes."""
    import copy

    twin = copy.deepcopy(model)
    conv_tv, conv = model.backbone.stage1.conv1_1, twin.backbone.stage1.conv1_1
    with torch.no_grad():
        w = conv_tv.weight / (255 * TV_STD.view(1, 3, 1, 1))  # per unit of RGB intensity
        # W_tv x_tv + b = w.(x - 255 m_tv) + b;  Caffe: w.(x - m_caffe) + b' -> b' = b + w.(m_caffe - 255 m_tv)
        shift = (w * (CAFFE_MEAN_BGR.flip(0) - 255 * TV_MEAN).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight.copy_(w.flip(1))  # RGB -> BGR input channels
        conv.bias.copy_(conv_tv.bias + shift)
    return twin


def main() -> int:
    import segbench

    torch.manual_seed(0)
    model = segbench.build_model("fcn32s", 21, base_channels=16, pretrained=False, dropout=0.0)
    with torch.no_grad():  # a non-zero scorer so gradients reach the trunk
        torch.nn.init.normal_(model.score_fr.weight, std=0.01)
    twin = caffe_twin(model)
    images = torch.rand(2, 3, 96, 128) * 255  # RGB, 0..255
    labels = torch.randint(0, 21, (2, 96, 128))
    x_tv = (images / 255 - TV_MEAN.view(1, 3, 1, 1)) / TV_STD.view(1, 3, 1, 1)
    x_caffe = images.flip(1) - CAFFE_MEAN_BGR.view(1, 3, 1, 1)
    print(f"input std: torchvision {x_tv.std():.3f}, Caffe {x_caffe.std():.1f}")
    grads = {}
    for name, net, x in (("torchvision", model, x_tv), ("caffe", twin, x_caffe)):
        net.zero_grad()
        logits = net(x)["out"]
        total = F.cross_entropy(logits, labels, reduction="sum")
        mean = F.cross_entropy(logits, labels)
        total.backward()
        grads[name] = {n: p.grad.norm().item() for n, p in net.named_parameters() if p.grad is not None}
        print(f"{name:12s} loss: summed {total.item():.1f}, mean {mean.item():.4f}, "
              f"summed / mean = {total.item() / mean.item():.0f} (= labelled pixels {labels.numel()})")
    print("gradient-norm ratio caffe / torchvision per layer:")
    for n in grads["caffe"]:
        if n.endswith("weight"):
            print(f"  {n:32s} {grads['caffe'][n] / grads['torchvision'][n]:8.2f}")
    w_ratio = model.backbone.stage1.conv1_1.weight.norm() / twin.backbone.stage1.conv1_1.weight.norm()
    print(f"conv1_1 weight-norm ratio torchvision / caffe {w_ratio:.1f}: relative update at equal lr "
          f"{grads['caffe']['backbone.stage1.conv1_1.weight'] / grads['torchvision']['backbone.stage1.conv1_1.weight'] * w_ratio:.0f}x "
          f"smaller in torchvision's parametrisation")
    model.score_fr.weight.data.zero_()
    with torch.no_grad():
        init = F.cross_entropy(model(x_tv)["out"], labels).item()
    print(f"zero-initialised scorer (the recipes' start): mean loss {init:.4f} = ln 21 = {torch.log(torch.tensor(21.)):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
