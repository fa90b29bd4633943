"""Memory: gradient checkpointing of the backbone, and sliding-window evaluation of full
Cityscapes images (1024 x 2048).

    python benchmarks/memory.py                          # DeepLab v3 R50 2 x 512x512; R101 at 1024x2048
    python benchmarks/memory.py --size 769 --batch 4 --rounds 3

1. ``trainer.grad_checkpoint``: peak tensor memory of one training step (live tensor bytes,
   weights + gradients + momentum + activations; :class:`segbench.engine.measure.TensorMemoryTracker`)
   and step time, with and without checkpointing, same model and batch, timed interleaved.
2. Evaluating one 1024 x 2048 image: peak tensor memory of ``segbench.engine.inference.predict``
   for the Cityscapes recipes' networks, whole image vs sliding windows (``window_batch`` windows
   per forward), counted on the meta device (every tensor's exact size, no arithmetic, seconds
   instead of minutes per configuration). The meta count is checked against a real CPU run
   of a small configuration first. Not counted: the framework's own scratch (oneDNN/cuDNN
   workspaces, im2col buffers), typically tens to a few hundred MB.
"""
from __future__ import annotations

import argparse
import copy
import sys
from statistics import median

import torch
from common import header, interleaved, ratio, train_closure, write_json

from segbench.api import build_model
from segbench.engine import measure
from segbench.engine.inference import predict
from segbench.engine.protocol import Protocol
from segbench.tables import markdown_table

GIB = 2**30


def training_peak(model, images, labels) -> int:
    step = train_closure(model, images, labels)
    step()  # gradients and momentum exist from here on, as in any step but the first
    optimizer_state = [p.grad for p in model.parameters() if p.grad is not None]
    return measure.peak_memory(step, torch.device("cpu"),
                               existing=[*model.parameters(), *model.buffers(), *optimizer_state])["peak_bytes"], step


def eval_peak(make, size, protocol: Protocol, device: str) -> int:
    model = measure.build_on(device, make).eval()
    if protocol.output_stride:
        model.set_output_stride(protocol.output_stride)
    images = torch.zeros(1, 3, *size, device=device)

    def run():
        with torch.inference_mode():
            predict(model, images, protocol=protocol)

    existing = [*model.parameters(), *model.buffers(), images]
    return measure.peak_memory(run, torch.device(device), existing=existing)["peak_bytes"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="below ~384 the weights, not the activations, set the peak")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--skip-checkpoint", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(header("Memory: gradient checkpointing and full-image evaluation", args))
    results = {}

    if not args.skip_checkpoint:
        images, labels = measure.random_batch(args.batch, (args.size, args.size), 21)
        torch.manual_seed(0)
        plain = build_model("deeplabv3", 21, backbone=args.backbone)
        checkpointed = copy.deepcopy(plain)
        checkpointed.set_grad_checkpointing()
        peak_plain, step_plain = training_peak(plain, images, labels)
        peak_ckpt, step_ckpt = training_peak(checkpointed, images, labels)
        times = interleaved({"plain": step_plain, "checkpointed": step_ckpt}, args.rounds, warmup=0)
        params = sum(p.numel() for p in plain.parameters()) * 4
        print(f"### trainer.grad_checkpoint: segbench deeplabv3 {args.backbone} (OS16, its recipe), training "
              f"{args.batch} x 3 x {args.size} x {args.size}, fp32, SGD momentum\n")
        static = 3 * params  # weights + gradients + SGD momentum, all fp32
        rows = [["off", f"{peak_plain / 2**20:.0f}", f"{(peak_plain - static) / 2**20:.0f}",
                 f"{1e3 * median(times['plain']):.0f}", "1.00"],
                ["on", f"{peak_ckpt / 2**20:.0f}", f"{(peak_ckpt - static) / 2**20:.0f}",
                 f"{1e3 * median(times['checkpointed']):.0f}", f"{ratio(times, 'checkpointed', 'plain'):.2f}"]]
        print(markdown_table(["grad_checkpoint", "peak MiB", f"peak - weights, grads, momentum ({static / 2**20:.0f} MiB)",
                              "step ms", "time x off"], rows))
        print(f"\npeak memory x{peak_ckpt / peak_plain:.2f}\n")
        results["grad_checkpoint"] = {"peak_off": peak_plain, "peak_on": peak_ckpt, "param_bytes": params,
                                      "times": times}

    # -- the meta count equals the real one (small case, both modes) --
    small = lambda: build_model("unet_small", 6)
    for protocol in (Protocol(), Protocol(mode="slide", crop_size=(64, 64), stride=(43, 43), window_batch=2)):
        real, meta = eval_peak(small, (96, 160), protocol, "cpu"), eval_peak(small, (96, 160), protocol, "meta")
        print(f"check: unet_small 96x160 {protocol.mode}: real CPU run {real} B, meta count {meta} B")
        assert real == meta, "meta counting disagrees with the real run"

    size = (1024, 2048)
    nets = {
        "deeplabv3 R101 (eval OS8)": (lambda: build_model("deeplabv3", 19), 8),
        "pspnet R101": (lambda: build_model("pspnet", 19), None),
    }
    protocols = [("whole image", {}),
                 ("slide 769, stride 513, 1 window/forward", {"mode": "slide", "crop_size": (769, 769),
                                                                  "stride": (513, 513), "window_batch": 1}),
                 ("slide 769, stride 513, 8 windows/forward", {"mode": "slide", "crop_size": (769, 769),
                                                                   "stride": (513, 513), "window_batch": 8}),
                 ("slide 713, stride 476, 1 window/forward (PSPNet)", {"mode": "slide", "crop_size": (713, 713),
                                                                           "stride": (476, 476), "window_batch": 1}),
                 # windows are k*OS+1 pixels for these corner-aligned nets (a 512 window is refused)
                 ("slide 513, stride 342, 1 window/forward", {"mode": "slide", "crop_size": (513, 513),
                                                                  "stride": (342, 342), "window_batch": 1})]
    rows, record = [], {}
    for net, (make, os_) in nets.items():
        for label, kw in protocols:
            for flip in (False, True):
                protocol = Protocol(output_stride=os_, flip=flip, **kw)
                peak = eval_peak(make, size, protocol, "meta")
                rows.append([net, label + (" + flip" if flip else ""), f"{peak / GIB:.2f}"])
                record[f"{net} | {label} | flip={flip}"] = peak
    print("\n### One 1024 x 2048 Cityscapes image, 19 classes, fp32, batch 1 (peak tensor memory, meta count)\n")
    print(markdown_table(["network", "protocol", "peak GiB"], rows))
    results["full_image_eval"] = record
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
