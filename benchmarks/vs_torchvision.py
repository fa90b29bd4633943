"""segbench's training step and inference against torchvision's reference segmentation models,
in the same process, same input and batch, interleaved.

    python benchmarks/vs_torchvision.py                                   # DeepLab v3 R50, 2 x 256x256
    python benchmarks/vs_torchvision.py --models deeplabv3_resnet50 deeplabv3_resnet101 fcn_resnet50 \
        --size 512 --batch 4 --rounds 5 --formats nchw channels_last

Pairs (torchvision, random init, no aux head <-> segbench):

* ``deeplabv3_resnet50/101`` <-> segbench ``deeplabv3`` built as torchvision builds it: same
  ResNet, output stride 8, no Multi-Grid, ASPP rates 12/24/36. (torchvision's head adds one
  3x3 256-channel conv after the ASPP; FLOPs are printed for both.)
* ``fcn_resnet50`` <-> segbench ``pspnet`` on the same dilated ResNet-50 (plain stem): segbench has
  no ResNet FCN; the heads differ, so compare the achieved FLOP rates, not the times.

Rows: *identical settings* (both fp32 in each memory format asked for; target: segbench
<= 1.05x torchvision's time), and *segbench defaults* (the recipe's own model config, DeepLab v3
at output stride 16 with Multi-Grid, and ``conf/trainer/default.yaml``'s precision/format)
against torchvision fp32 NCHW. Also: the machine's fp32 and bf16 GEMM rate, measured in the
same run, and the fraction of the fp32 rate each training step reaches (FLOPs from
FlopCounterMode, 1 multiply-add = 2 FLOPs). Where a ratio misses its target, the
``torch.profiler`` top ops of both steps are printed.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from statistics import median

import torch
from common import (
    gemm_closure,
    header,
    infer_closure,
    interleaved,
    ratio,
    top_ops,
    torchvision_model,
    train_closure,
    write_json,
)

from segbench.api import build_model
from segbench.app import configs
from segbench.engine import measure
from segbench.engine.measure import Setting
from segbench.tables import markdown_table

PAIRS = {
    "deeplabv3_resnet50": ("deeplabv3", {"backbone": "resnet50", "output_stride": 8, "multi_grid": [1, 1, 1]}),
    "deeplabv3_resnet101": ("deeplabv3", {"backbone": "resnet101", "output_stride": 8, "multi_grid": [1, 1, 1]}),
    "fcn_resnet50": ("pspnet", {"backbone": "resnet50", "deep_stem": False, "aux_head": False}),
}
DEFAULTS = {"deeplabv3_resnet50": ("deeplabv3", {"backbone": "resnet50"}),
            "deeplabv3_resnet101": ("deeplabv3", {"backbone": "resnet101"}),
            "fcn_resnet50": ("pspnet", {"backbone": "resnet50"})}
TARGET = 1.05


def trainer_defaults():
    return measure.default_setting(torch.device("cpu"), configs.compose("train").trainer)


def train_flops(make, size) -> int:
    """Per image, forward + backward (counted on a batch of 2: train-mode BN needs it)."""
    return measure.flops_per_image(make, (size, size), train=True)[0]


def infer_flops(make, size) -> int:
    return measure.count_flops(measure.build_on("meta", make), torch.randn(1, 3, size, size, device="meta"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deeplabv3_resnet50"], choices=list(PAIRS))
    parser.add_argument("--size", type=int, default=256, help="square input side")
    parser.add_argument("--batch", type=int, default=2, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--formats", nargs="+", default=["nchw"], choices=["nchw", "channels_last"])
    parser.add_argument("--no-defaults", action="store_true", help="skip the segbench-defaults row")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    print(header("segbench vs torchvision: training step and inference", args))
    cpu = torch.device("cpu")
    default = trainer_defaults()
    gemm_before = {"fp32": measure.matmul_rate(torch.float32, cpu, 1024, 2.0),
                   "bf16": measure.matmul_rate(torch.bfloat16, cpu, 512, 2.0)}
    print(f"GEMM rate (square, 1 multiply-add = 2 FLOPs): fp32 1024^3 {gemm_before['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 512^3 {gemm_before['bf16'] / 1e9:.2f} GFLOP/s")
    print(f"segbench trainer defaults on this machine: {default.name}\n")
    results = {"gemm": gemm_before, "default_setting": default.name, "models": {}}
    images, labels = measure.random_batch(args.batch, (args.size, args.size), 21)
    infer_images = images[: args.infer_batch].clone()

    for tv_name in args.models:
        sb_name, same = PAIRS[tv_name]
        def_name, def_over = DEFAULTS[tv_name]
        makers = {"torchvision": partial(torchvision_model, tv_name),
                  "segbench": partial(build_model, sb_name, 21, **same),
                  "segbench defaults": partial(build_model, def_name, 21, **def_over)}
        flops = {k: (infer_flops(m, args.size), train_flops(m, args.size)) for k, m in makers.items()}
        train, infer, label = {}, {}, {}
        for fmt in args.formats:
            setting = Setting("fp32", fmt == "channels_last")
            for who in ("torchvision", "segbench"):
                torch.manual_seed(0)
                key = f"{who} fp32 {fmt}"
                train[key] = train_closure(makers[who](), images, labels, setting)
                torch.manual_seed(0)
                infer[key] = infer_closure(makers[who](), infer_images, setting)
                label[key] = who
        if not args.no_defaults:
            key = f"segbench defaults ({default.name})"
            torch.manual_seed(0)
            train[key] = train_closure(makers["segbench defaults"](), images, labels, default)
            torch.manual_seed(0)
            infer[key] = infer_closure(makers["segbench defaults"](), infer_images, default)
            label[key] = "segbench defaults"

        print(f"### {tv_name} vs segbench {sb_name}({', '.join(f'{k}={v}' for k, v in same.items())}); "
              f"input {args.batch} x 3 x {args.size} x {args.size} (inference batch {args.infer_batch})\n")
        gemm, gemm_flops = gemm_closure(torch.float32, 1024, 0.5)
        t_train = interleaved({**train, "fp32 GEMM": gemm}, args.rounds, args.warmup)
        gemm_rates = [gemm_flops / t for t in t_train["fp32 GEMM"]]
        t_infer = interleaved(infer, args.rounds, args.warmup)
        reference = "torchvision fp32 nchw"
        rows, record = [], {}
        for key in train:
            who = label[key]
            tf = flops[who][1] * args.batch
            step = median(t_train[key])
            same_fmt_ref = "torchvision" + key[len(who):] if who == "segbench" else reference
            r_train = ratio(t_train, key, same_fmt_ref if who != "torchvision" else key)
            r_infer = ratio(t_infer, key, same_fmt_ref if who != "torchvision" else key)
            r_train_ref, r_infer_ref = ratio(t_train, key, reference), ratio(t_infer, key, reference)
            util = median(tf / t / g for t, g in zip(t_train[key], gemm_rates))  # per round, same load
            rows.append([key, f"{flops[who][0] / 1e9:.1f}", f"{tf / args.batch / 1e9:.1f}",
                         f"{1e3 * step:.0f}", f"{1e3 * median(t_infer[key]):.0f}",
                         f"{r_train:.3f}" if who == "segbench" else "", f"{r_infer:.3f}" if who == "segbench" else "",
                         f"{r_train_ref:.3f}", f"{r_infer_ref:.3f}", f"{100 * util:.0f}%"])
            record[key] = {"train_s": t_train[key], "infer_s": t_infer[key], "ratio_train_same_setting": r_train,
                           "ratio_infer_same_setting": r_infer, "ratio_train_vs_tv_fp32_nchw": r_train_ref,
                           "ratio_infer_vs_tv_fp32_nchw": r_infer_ref, "infer_flops": flops[who][0],
                           "train_flops_per_image": flops[who][1], "fp32_gemm_fraction": util}
        print(markdown_table(["run", "GFLOPs/img fwd", "GFLOPs/img train", "train step ms", "inference ms",
                              "x tv (same setting), train", "x tv (same setting), infer",
                              "x tv fp32 NCHW, train", "x tv fp32 NCHW, infer", "train FLOP rate / fp32 GEMM"], rows))
        print(f"\n(x tv < 1: faster than torchvision; medians of per-round ratios. fp32 GEMM 1024^3 timed in the same "
              f"rounds: {median(gemm_rates) / 1e9:.1f} GFLOP/s)\n")
        results["models"].setdefault("gemm_rates", {})[tv_name] = gemm_rates
        results["models"][tv_name] = record
        for key in (k for k in record if label[k] == "segbench"):
            ref = "torchvision" + key[len("segbench"):]
            for kind, closures in (("train", train), ("infer", infer)):
                if record[key][f"ratio_{kind}_same_setting"] > TARGET:
                    what = "training step" if kind == "train" else "inference"
                    print(f"{key} misses the {TARGET}x target ({what}); torch.profiler top ops of one call:\n")
                    print(f"segbench:\n```\n{top_ops(closures[key])}\n```\n"
                          f"torchvision:\n```\n{top_ops(closures[ref])}\n```\n")
        del train, infer

    gemm_after = measure.matmul_rate(torch.float32, cpu, 1024, 2.0)
    print(f"fp32 GEMM rate after the runs: {gemm_after / 1e9:.1f} GFLOP/s (before: {gemm_before['fp32'] / 1e9:.1f})")
    results["gemm_fp32_after"] = gemm_after
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
