"""Does the data pipeline keep up with training? The default demo run (`segbench train`:
unet_small on the synthetic set, batch 16, 64x64 crops, data.num_workers=auto).

    python benchmarks/input_pipeline.py [--iters 30] [--workers auto] [override ...]

Three figures from one Trainer, in one process: the images/s the DataLoader delivers alone
(the trainer's own ``build.build_train_loader``, warm workers), the images/s the training step consumes alone
(``trainer.step`` on one batch held in memory), and the images/s of the real loop (loader +
step). Target: loader >= 3x step. On a machine with few cores the workers and the step share
the same cores, so the loop figure, not the loader-alone one, says whether data is a bottleneck.
Extra arguments are Hydra overrides of the train config (e.g. ``model=fcn8s``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import header

from segbench.app import configs
from segbench.engine import build
from segbench.engine.trainer import Trainer
from segbench.tables import markdown_table


def rate(fn, iters: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return iters * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--workers", default=None, help="data.num_workers: auto or a count (default: the config's)")
    parser.add_argument("--data-root", default=None, help="synthetic set location (default: a temp dir)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    print(header("Input pipeline vs training step (segbench train defaults)", args))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or str(Path(tmp) / "synthetic")
        overrides = [f"data.root={root}", "trainer.progress=false", *args.overrides]
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        cfg = configs.compose("train", overrides)
        trainer = Trainer(cfg, Path(tmp) / "run")
        batch = int(cfg.data.batch_size)
        built = build.build_train_loader(cfg, trainer.train_set, trainer.world, 0, trainer.device)
        loader = iter(built)
        held = next(loader)  # workers started
        for _ in range(3):
            next(loader)
        trainer.net.train()
        for _ in range(3):
            trainer.step(held)  # warm-up
        step_rate = rate(lambda: trainer.step(held), args.iters, batch)
        loader_rate = rate(lambda: next(loader), args.iters, batch)
        loop_rate = rate(lambda: trainer.step(next(loader)), args.iters, batch)
        step_rate_2 = rate(lambda: trainer.step(held), args.iters, batch)  # again: the machine drifts
        step = (step_rate + step_rate_2) / 2
        print(f"model {cfg.model._target_} (base_channels {cfg.model.base_channels}), batch {batch}, "
              f"crop {list(cfg.data.transforms.train.crop_size)}, data.num_workers {cfg.data.num_workers} "
              f"({built.num_workers} workers), "
              f"precision {trainer.precision}, {args.iters} iterations per figure\n")
        print(markdown_table(["figure", "images/s", "x training step"], [
            ["training step alone (batch in memory)", f"{step:.1f}", "1.00"],
            ["DataLoader alone", f"{loader_rate:.1f}", f"{loader_rate / step:.2f}"],
            ["real loop (loader + step)", f"{loop_rate:.1f}", f"{loop_rate / step:.2f}"],
        ]))
        print(f"\nstep alone before / after: {step_rate:.1f} / {step_rate_2:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
