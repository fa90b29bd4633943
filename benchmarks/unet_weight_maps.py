"""U-Net's eq. 2 weight maps: in the step (main process, before) or from the loader's workers (after).

    python benchmarks/unet_weight_maps.py [--root ../shared/data/isbi] [--rounds 5] [--width 8]

The unet_isbi recipe's training tiles (388x388 output of a 572x572 input, batch 1, real ISBI
slices through the recipe's pipeline), and one interleaved A/B in one process: the step as it was
(scipy labelling and one distance transform per cell, then forward/backward/update, the step's
cost being independent of the map's values) against the step as it is (the map arrives with the
batch, computed in a worker). The
network runs at ``--width`` base channels instead of the paper's 64 so that the CPU step stays
short; the map's cost does not depend on the width, and on a GPU the whole step takes ~30 ms.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from common import header, interleaved, ratio

from segbench.app import configs
from segbench.data.normalization import Normalization
from segbench.engine import build, measure
from segbench.tables import markdown_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=8, help="model.base_channels (the paper: 64)")
    args = parser.parse_args(argv)
    print(header("U-Net weight maps: in the step vs from the workers (unet_isbi tiles)", args))
    cfg = configs.compose("train", ["experiment=unet_isbi", f"data.root={args.root}",
                                    f"model.base_channels={args.width}", "model.dropout=0"])
    dataset = build.build_dataset(cfg, "train", train=True)
    maps = build.weight_maps(cfg)
    samples = []
    for i in range(args.rounds + 1):
        dataset.transform.set_random_seed(i)
        sample = dataset[i % len(dataset)]
        samples.append((sample["image"][None], sample["label"][None], maps(sample["label"])[None]))
    torch.manual_seed(0)
    model = build.build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    images, labels, _ = samples[0]
    step = measure.make_train_step(model, build.instantiate_unwrapped(cfg.loss), optimizer, images, labels,
                                   measure.Setting("fp32", False), Normalization.from_data_config(cfg.data))
    feed = iter(samples * (4 * args.rounds))  # each round maps another tile's labels

    def map_only():
        _, tile_labels, _ = next(feed)
        return torch.stack([maps(label) for label in tile_labels])

    def before():  # the map made where the loss ran, then the step
        map_only()
        step()

    times = interleaved({"before": before, "after": step, "map": map_only}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tile {list(samples[0][0].shape[-2:])} in, batch 1, base_channels {args.width}, {args.rounds} rounds, medians\n")
    print(markdown_table(["", "s per step", "x after"], [
        ["step, map in the main process (before)", f"{med['before']:.3f}", f"{ratio(times, 'before', 'after'):.2f}"],
        ["step, map from the workers (after)", f"{med['after']:.3f}", "1.00"],
        ["the map alone (now in a worker)", f"{med['map']:.3f}", f"{ratio(times, 'map', 'after'):.2f}"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
