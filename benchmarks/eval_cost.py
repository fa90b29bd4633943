"""What an evaluation protocol costs: multi-scale + flip against single scale.

    python benchmarks/eval_cost.py                      # DeepLab v3 R50 and unet_small, 1 x 256x256
    python benchmarks/eval_cost.py --size 512 --rounds 3

``segbench.engine.inference.predict`` on one image with the single-scale protocol and with
DeepLab v3's MS + flip (scales 0.5 ... 1.75, §4.3), timed interleaved; next to it the FLOP
factor (FlopCounterMode on the meta device), which for a fully convolutional net is
2 x sum(scale^2) = 17.4 for these six scales. The time factor lands below the FLOP factor
where the small scales run less efficiently per FLOP, above it where the large ones do.
"""
from __future__ import annotations

import argparse
import sys
from statistics import median

import torch
from common import header, interleaved, ratio, write_json
from torch.utils.flop_counter import FlopCounterMode

from segbench.api import build_model
from segbench.engine import measure
from segbench.engine.inference import predict
from segbench.engine.protocol import Protocol
from segbench.tables import markdown_table

MS_FLIP = Protocol(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
SINGLE = Protocol()


def closure(model, images, protocol):
    def run():
        with torch.inference_mode():
            predict(model, images, protocol=protocol)
    return run


def flops(make, size, protocol) -> int:
    model = measure.build_on("meta", make).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        predict(model, torch.zeros(1, 3, size, size, device="meta"), protocol=protocol)
    return counter.get_total_flops()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(header("Evaluation protocol cost: MS + flip vs single scale", args))
    nets = {"deeplabv3 R50 (OS16)": lambda: build_model("deeplabv3", 21, backbone="resnet50"),
            "unet_small": lambda: build_model("unet_small", 6)}
    images = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows, results = [], {}
    for name, make in nets.items():
        torch.manual_seed(0)
        model = make().eval()
        times = interleaved({"single": closure(model, images, SINGLE), "ms_flip": closure(model, images, MS_FLIP)},
                            args.rounds, warmup=1)
        f1, f2 = flops(make, args.size, SINGLE), flops(make, args.size, MS_FLIP)
        rows.append([name, f"{1e3 * median(times['single']):.0f}", f"{1e3 * median(times['ms_flip']):.0f}",
                     f"{ratio(times, 'ms_flip', 'single'):.1f}", f"{f2 / f1:.1f}"])
        results[name] = {"times": times, "flops_single": f1, "flops_ms_flip": f2}
    print(f"One {args.size} x {args.size} image; MS + flip = scales {list(MS_FLIP.scales)} x (image, mirror)\n")
    print(markdown_table(["network", "single ms", "MS+flip ms", "time factor", "FLOP factor"], rows))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
