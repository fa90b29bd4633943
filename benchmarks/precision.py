"""Precision x memory format (x torch.compile): the figures behind conf/trainer/default.yaml.

    python benchmarks/precision.py                      # unet_small 16x64x64, DeepLab v3 R50 2x256x256
    python benchmarks/precision.py --skip-deeplab --rounds 3 --compile     # + torch.compile, unet_small

For each network, the training step (step.train_step: forward, loss, backward, SGD) and
eval-mode inference in fp32 / bf16 autocast x NCHW / channels_last, timed interleaved in one
process, as ratios to fp32 NCHW (> 1 = slower). The networks: segbench's demo model
(``segbench train``'s defaults: unet_small, synthetic data, batch 16, 64x64 crops) and
torchvision's DeepLab v3 ResNet-50 (the model of the "channels_last + bf16 trains 2.4x faster"
claim). The fp32 and bf16 GEMM rates of the machine are measured in the same run: without
AVX512-BF16/AMX there are no bf16 kernels, and every bf16 matmul/conv pays for it.
``--compile`` adds torch.compile (inductor) fp32 rows; their first call (compilation) is
reported separately.
"""
from __future__ import annotations

import argparse
import sys
import time
from statistics import median

import torch
from common import (
    header,
    infer_closure,
    interleaved,
    ratio,
    torchvision_model,
    train_closure,
    write_json,
)

from segbench.api import build_model
from segbench.engine import measure
from segbench.engine.device import cpu_has_native_bf16, resolve_precision
from segbench.engine.measure import Setting
from segbench.tables import markdown_table

SETTINGS = [Setting("fp32", False), Setting("fp32", True), Setting("bf16", False), Setting("bf16", True)]


def run_network(title, make, batch, size, num_classes, rounds, warmup, compile_):
    images, labels = measure.random_batch(batch, (size, size), num_classes)
    train, infer, compile_s = {}, {}, {}
    for setting in SETTINGS:
        torch.manual_seed(0)
        train[setting.name] = train_closure(make(), images, labels, setting)
        torch.manual_seed(0)
        infer[setting.name] = infer_closure(make(), images[:1], setting)
    if compile_:
        compiled = Setting("fp32", False, compile=True)
        for kind, closures in (("train", train), ("infer", infer)):
            torch.manual_seed(0)
            fn = (train_closure(make(), images, labels, compiled) if kind == "train"
                  else infer_closure(make(), images[:1], compiled))
            start = time.perf_counter()
            fn()  # compilation
            compile_s[kind] = time.perf_counter() - start
            closures[compiled.name] = fn
    t_train = interleaved(train, rounds, warmup)
    t_infer = interleaved(infer, rounds, warmup)
    ref = Setting("fp32", False).name
    rows = [[k, f"{1e3 * median(t_train[k]):.0f}", f"{ratio(t_train, k, ref):.2f}",
             f"{1e3 * median(t_infer[k]):.1f}", f"{ratio(t_infer, k, ref):.2f}"] for k in train]
    print(f"### {title}: training batch {batch} x 3 x {size} x {size}, inference batch 1\n")
    print(markdown_table(["setting", "train step ms", "x fp32 NCHW", "inference ms", "x fp32 NCHW"], rows))
    if compile_s:
        print(f"\ntorch.compile first call (compilation): train {compile_s['train']:.0f} s, "
              f"inference {compile_s['infer']:.0f} s")
    print()
    return {"train_s": t_train, "infer_s": t_infer, "compile_s": compile_s,
            "ratios_train": {k: ratio(t_train, k, ref) for k in train},
            "ratios_infer": {k: ratio(t_infer, k, ref) for k in infer}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unet-batch", type=int, default=16)
    parser.add_argument("--unet-size", type=int, default=64)
    parser.add_argument("--deeplab-batch", type=int, default=2)
    parser.add_argument("--deeplab-size", type=int, default=256,
                        help="not much smaller: below ~128 px the OS-8 ASPP (rates 12/24/36) convolves mostly "
                             "padding and every setting is pathologically slow")
    parser.add_argument("--deeplab-rounds", type=int, default=1,
                        help="one: a bf16 step takes minutes on CPUs without bf16 hardware")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-deeplab", action="store_true")
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add torch.compile fp32 NCHW rows")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    cpu = torch.device("cpu")
    print(header("Precision and memory format", args))
    fp32 = measure.matmul_rate(torch.float32, cpu, 1024, 2.0)
    bf16 = measure.matmul_rate(torch.bfloat16, cpu, 512, 2.0)
    native = cpu_has_native_bf16()
    print(f"GEMM: fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.2f} GFLOP/s (bf16 / fp32 = {bf16 / fp32:.3f}); "
          f"native bf16 (AVX512-BF16/AMX): {native}; trainer.precision=auto resolves to "
          f"{resolve_precision(cpu, 'auto')}\n")
    results = {"gemm_fp32": fp32, "gemm_bf16": bf16, "native_bf16": native}
    if not args.skip_unet:
        results["unet_small"] = run_network(
            "segbench unet_small (the demo model)",
            lambda: build_model("unet_small", 6), args.unet_batch, args.unet_size, 6, args.rounds, args.warmup,
            args.compile)
    if not args.skip_deeplab:
        results["deeplabv3_resnet50"] = run_network(
            "torchvision deeplabv3_resnet50", lambda: torchvision_model("deeplabv3_resnet50"),
            args.deeplab_batch, args.deeplab_size, 21, args.deeplab_rounds, args.warmup, False)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
