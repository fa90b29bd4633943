"""Whole-image evaluation on the real CamVid, before and after evaluation kept the training geometry.

    python benchmarks/eval_alignment.py --root ../shared/data/camvid --minutes 5 --batch 8 --precision fp32

A DeepLab v3 (the ResNet-50 trunk narrowed to width 4, ASPP of 16 channels: the architecture at a
cost two shared CPU cores can pay) is trained from scratch for ``--minutes`` of training steps on
random, flipped 161x161 crops (16*10+1 pixels: the geometry of the paper's 513 crops, on which
feature j lies on pixel 16*j) of the first ``--train-images`` train frames. Then the 101 val frames,
480x360 (neither side k*16+1 nor k*8+1), are scored whole-image with the same weights, at OS 16
(the training stride) and OS 8 (v3's evaluation stride, §4.1), two ways:

* ``before``: the frame as it is, as segbench evaluated before (the model's ``corner_aligned``
  switched off on the instance, so the protocol sees no constraint): the last features are
  stretched onto the bottom/right edge, up to 15 px off at OS 16;
* ``after``: padded at the bottom/right to 369x481 (OS 16) or 361x481 (OS 8), scores cropped back.

Prints one Markdown table (mIoU, aAcc, mAcc in percent and the after - before difference).
Precision (``--precision auto``): bf16 autocast + channels_last where ``cpu_has_native_bf16()`` (AMX),
else fp32.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from camvid_learning_curve import Cached, scores_of, training_parts  # noqa: E402  (shared with that benchmark)
from segbench.app import configs  # noqa: E402
from segbench.data.normalization import Normalization  # noqa: E402
from segbench.engine import build  # noqa: E402
from segbench.engine.device import cpu_has_native_bf16  # noqa: E402
from segbench.engine.evaluator import evaluate  # noqa: E402
from segbench.engine.step import train_step  # noqa: E402
from segbench.tables import markdown_table  # noqa: E402

CROP = 16 * 10 + 1


def config(root: str):
    return configs.compose("train", [
        "model=deeplabv3", "data=camvid", f"data.root={root}", "data.num_workers=0", "model.backbone=resnet50",
        "model.backbone_width=4", "model.aspp_channels=16", "model.pretrained=false", "optim=adamw",
        "optim.lr=0.001"])


def random_crops(data: Cached, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random CROP x CROP windows of random frames, half of them mirrored."""
    idx = torch.randint(len(data), (batch,), generator=gen)
    height, width = data.labels.shape[-2:]
    images, labels = [], []
    for i in idx.tolist():
        y = int(torch.randint(height - CROP + 1, (1,), generator=gen))
        x = int(torch.randint(width - CROP + 1, (1,), generator=gen))
        image = data.images[i, :, y:y + CROP, x:x + CROP]  # uint8, normalised in the step
        label = data.labels[i, y:y + CROP, x:x + CROP]
        if torch.rand(1, generator=gen) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    parser.add_argument("--minutes", type=float, default=5.0, help="training-step budget")
    parser.add_argument("--train-images", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--os", type=int, nargs="+", default=[16, 8], help="output strides to evaluate at")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: on a loaded, shared machine a second OpenMP thread "
                             "waited ~40x longer per step than it saved here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = config(args.root)
    torch.manual_seed(args.seed)
    precision = args.precision if args.precision != "auto" else "bf16" if cpu_has_native_bf16() else "fp32"
    channels_last = precision == "bf16"
    train = Cached(build.build_dataset(cfg, "train", train=False), limit=args.train_images)
    val = Cached(build.build_dataset(cfg, "val", train=False))

    model, optimizer, criterion, scaler = training_parts(cfg, channels_last)
    gen = torch.Generator().manual_seed(args.seed)
    normalization = Normalization.from_data_config(cfg.data)
    model.train()
    steps, trained_s, loss = 0, 0.0, float("nan")
    while trained_s < 60 * args.minutes:
        images, labels = random_crops(train, args.batch, gen)
        t0 = time.perf_counter()
        loss = float(train_step(model, criterion, optimizer, scaler, images, labels, precision, channels_last,
                                normalization=normalization))
        trained_s += time.perf_counter() - t0
        steps += 1
    print(f"trained {steps} steps x {args.batch} crops of {CROP}x{CROP} in {trained_s:.0f} s "
          f"(last loss {loss:.3f}), {precision}", flush=True)

    loader = DataLoader(val, batch_size=4)
    rows = []
    for output_stride in args.os:
        scores = {}
        for when, aligned in (("before", False), ("after", True)):
            model.corner_aligned = aligned  # instance attribute: before = the frame as it is
            matrix = evaluate(model, loader, val.num_classes, torch.device("cpu"), precision, channels_last,
                              {"output_stride": output_stride}, progress=False, normalization=normalization)
            scores[when] = scores_of(matrix)
        rows.append([f"OS {output_stride}", *(f"{scores[w][k]:.2f}" for w in ("before", "after")
                                              for k in ("mIoU", "aAcc", "mAcc")),
                     f"{scores['after']['mIoU'] - scores['before']['mIoU']:+.2f}"])
    del model.corner_aligned
    print(markdown_table(["eval at", "mIoU before", "aAcc before", "mAcc before", "mIoU after", "aAcc after",
                          "mAcc after", "Δ mIoU"], rows))


if __name__ == "__main__":
    main()
