"""The default training step against its references and against the machine's GEMM rate.

    python benchmarks/step_limit.py                                    # DeepLab v3 R-50 OS8, 4 x 256^2
    python benchmarks/step_limit.py --model pspnet --profile           # + torch.profiler table by op
    python benchmarks/step_limit.py --model segnet_basic --size 360 480 --rounds 3
    python benchmarks/step_limit.py --compile                          # + torch.compile (warm-up stated)

In one process, interleaved (round r times every candidate once, in alternating order), on
random images and labels, SGD + momentum as the recipes:

* ``torchvision fp32 NCHW`` / ``torchvision bf16 channels_last`` (DeepLab v3 only): torchvision's
  ``deeplabv3_resnet50`` (OS8), its plain fp32 step and its best CPU setting;
* ``segbench default``: segbench's model (for DeepLab v3 built as torchvision builds it: R-50, OS8,
  no Multi-Grid) trained as ``segbench train`` would here: ``trainer.precision`` and
  ``channels_last`` resolved by engine/build.py (``auto``), the optimiser from
  ``build_optimizer`` (fused step where available);
* ``segbench previous default``: the same model as before issue 13's defaults (bf16 autocast where
  native, NCHW, for-loop SGD);
* ``segbench fp32 NCHW``: the same model in fp32;
* the bf16 (2048^2) and fp32 (1024^2) GEMM rates, timed in the same rounds, so the fraction of the
  machine's limit compares like with like under changing load.

FLOPs are FlopCounterMode's (conv/matmul only, 1 multiply-add = 2 FLOPs) of forward + backward.
"""
from __future__ import annotations

import argparse
import sys
import time
from statistics import median

import torch
from common import (
    gemm_closure,
    header,
    interleaved,
    ratio,
    sgd,
    torchvision_model,
    train_closure,
    write_json,
)

from segbench.api import build_model
from segbench.app import configs
from segbench.engine import measure
from segbench.engine.optim import fused_step_options
from segbench.engine.measure import Setting
from segbench.tables import markdown_table

MODELS = {
    "deeplabv3": {"backbone": "resnet50", "output_stride": 8, "multi_grid": [1, 1, 1]},
    "pspnet": {"backbone": "resnet50"},
    "segnet": {},
    "segnet_basic": {},
}
GEMM_OPS = ("convolution", "mkldnn_conv", "addmm", "aten::mm", "matmul", "bmm", "linear")


def trainer_setting():
    return measure.default_setting(torch.device("cpu"), configs.compose("train").trainer)


def step_closure(model, images, labels, setting: Setting, fused: bool):
    """``step.train_step`` with SGD(lr 0.01, momentum 0.9, wd 1e-4) as conf/optim/sgd.yaml, with
    the fused step ``build_optimizer`` adds, or the for-loop step of the previous default."""
    step = fused_step_options({"_target_": "torch.optim.SGD"}, model.parameters()) if fused else {"foreach": False}
    return train_closure(model, images, labels, setting, optimizer=sgd(model, **step))


def train_flops(make, batch, size) -> int:
    """FLOPs of one forward + backward of the whole batch (``flops_per_image`` x batch)."""
    return measure.flops_per_image(make, size, train=True)[0] * batch


def profile_table(fn, rows: int) -> tuple[str, float]:
    """``torch.profiler`` ops of one call by self CPU time, and the share of conv/matmul ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in GEMM_OPS))
    return events.table(sort_by="self_cpu_time_total", row_limit=rows), gemm / max(total, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deeplabv3", choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="H [W]")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print the profiler table of the default step")
    parser.add_argument("--profile-rows", type=int, default=22)
    parser.add_argument("--compile", action="store_true", help="add torch.compile of the default step")
    parser.add_argument("--no-previous", action="store_true", help="skip the previous-default row")
    parser.add_argument("--no-fp32", action="store_true", help="skip segbench's fp32 row (torchvision's stays)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (1 on a loaded shared machine: no waiting on descheduled peers)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])

    print(header(f"{args.model} training step vs references and the GEMM limit", args))
    default = trainer_setting()
    print(f"segbench default here: {default.name} (trainer.precision/channels_last: auto), fused SGD step: "
          f"{bool(fused_step_options({'_target_': 'torch.optim.SGD'}, [torch.zeros(1)]))}\n")
    images, labels = measure.random_batch(args.batch, size, args.classes)

    def make_sb():
        return build_model(args.model, args.classes, **MODELS[args.model])

    def build_sb(precision, cl, fused):
        torch.manual_seed(0)
        return step_closure(make_sb(), images, labels, Setting(precision, cl), fused)

    candidates, flops = {}, {}
    if args.model == "deeplabv3":
        for name, precision, cl in (("torchvision fp32 NCHW", "fp32", False),
                                    ("torchvision bf16 channels_last", "bf16", True)):
            torch.manual_seed(0)
            model = torchvision_model("deeplabv3_resnet50", args.classes)
            candidates[name] = step_closure(model, images, labels, Setting(precision, cl), fused=False)
        flops["torchvision"] = train_flops(lambda: torchvision_model("deeplabv3_resnet50", args.classes),
                                           args.batch, size)
    flops["segbench"] = train_flops(make_sb, args.batch, size)
    candidates["segbench default"] = build_sb(default.precision, default.channels_last, True)
    if not args.no_previous:
        candidates["segbench previous default"] = build_sb(default.precision, False, False)
    if not args.no_fp32 or args.model != "deeplabv3":  # the reference row of the other models
        candidates["segbench fp32 NCHW"] = build_sb("fp32", False, True)
    compile_s = None
    if args.compile:
        torch.manual_seed(0)
        fn = step_closure(make_sb(), images, labels, Setting(default.precision, default.channels_last, compile=True),
                          True)
        start = time.perf_counter()
        fn()
        compile_s = time.perf_counter() - start
        candidates["segbench default, torch.compile"] = fn
        print(f"torch.compile: first step (compilation) {compile_s:.1f} s\n")
    bf16_gemm, bf16_flops = gemm_closure(torch.bfloat16, 2048, 0.5)
    fp32_gemm, fp32_flops = gemm_closure(torch.float32, 1024, 0.5)
    candidates["bf16 GEMM 2048^2"], candidates["fp32 GEMM 1024^2"] = bf16_gemm, fp32_gemm

    times = interleaved(candidates, args.rounds, args.warmup)
    bf16_rate = [bf16_flops / t for t in times["bf16 GEMM 2048^2"]]
    fp32_rate = [fp32_flops / t for t in times["fp32 GEMM 1024^2"]]
    reference = "torchvision fp32 NCHW" if "torchvision fp32 NCHW" in candidates else "segbench fp32 NCHW"
    best = "torchvision bf16 channels_last" if "torchvision bf16 channels_last" in candidates else None
    rows, record = [], {}
    for name in (k for k in candidates if "GEMM" not in k):
        work = flops["torchvision" if name.startswith("torchvision") else "segbench"]
        rate = [work / t for t in times[name]]
        low_precision = "bf16" in name or (name.startswith("segbench") and "fp32" not in name
                                           and default.precision != "fp32")  # default and previous default
        limit = bf16_rate if low_precision else fp32_rate
        fraction = median(r / g for r, g in zip(rate, limit))
        rec = {"step_s": times[name], "median_s": median(times[name]), "train_flops": work,
               "speedup_vs_reference": 1 / ratio(times, name, reference),
               "speedup_vs_best": (1 / ratio(times, name, best)) if best else None,
               "gflops_per_s": median(rate) / 1e9, "fraction_of_gemm": fraction,
               "gemm_used": "bf16" if low_precision else "fp32"}
        record[name] = rec
        rows.append([name, f"{rec['median_s']:.2f}", f"{rec['speedup_vs_reference']:.2f}",
                     "" if best is None else f"{rec['speedup_vs_best']:.2f}", f"{rec['gflops_per_s']:.0f}",
                     f"{100 * fraction:.0f}% of {rec['gemm_used']}"])
    print(markdown_table(["step", "median s", f"x {reference}", "x torchvision best" if best else "",
                          "GFLOP/s", "of the GEMM rate (same rounds)"], rows))
    print(f"\nGEMM rates in the same rounds: bf16 2048^2 {median(bf16_rate) / 1e9:.0f} GFLOP/s, fp32 1024^2 "
          f"{median(fp32_rate) / 1e9:.0f} GFLOP/s. Train FLOPs per step: "
          + ", ".join(f"{k} {v / 1e12:.2f} TFLOP" for k, v in flops.items())
          + f". x > 1 = faster; medians of per-round ratios, {args.rounds} rounds.")
    result = {"model": args.model, "batch": args.batch, "size": size, "default": default.name,
              "candidates": record, "bf16_gemm_flops": bf16_rate, "fp32_gemm_flops": fp32_rate,
              "compile_first_step_s": compile_s, "cpu": measure.cpu_info()}
    if args.profile:
        table, share = profile_table(candidates["segbench default"], args.profile_rows)
        print(f"\ntorch.profiler, one segbench default step ({default.name}); conv/matmul ops "
              f"{100 * share:.0f}% of self CPU time:\n\n```\n{table}\n```")
        result["profile_gemm_share"] = share
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
