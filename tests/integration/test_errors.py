"""Every failure a user can cause ends in one message that names the problem and what to do,
exit status 2, no traceback, and nothing already written changed or left behind.

The cases run `segbench.cli.main` in this process (they fail within the first second, so a
subprocess per case would be mostly Python/torch start-up); the README "Errors" table lists
them. Signals are in test_signals.py (they need a real process).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_SYNTHETIC, compose_train

pytestmark = pytest.mark.slow

TRAIN = [*TINY_SYNTHETIC, "data.root={root}"]
RUN_FILES = ("last.pt", "best.pt")  # and run.json's training part: what a failure must never change


@pytest.fixture(scope="module")
def world(synthetic_root, tmp_path_factory):
    """A finished tiny run (2 iterations), plus a copy of the data with a corrupt train image and
    one with an empty train list."""
    from segbench.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("errors")
    run = base / "run"
    Trainer(compose_train([*TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=2",
                           "trainer.val_interval=2"]), run).fit()
    corrupt = base / "corrupt"
    shutil.copytree(synthetic_root, corrupt)
    first_val = (corrupt / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    victim = corrupt / "JPEGImages" / f"{first_val}.jpg"  # validation reads every val image
    victim.write_bytes(b"not a jpeg")
    empty = base / "empty_list"
    shutil.copytree(synthetic_root, empty)
    (empty / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    (base / "random.pt").write_bytes(os.urandom(4096))
    (base / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.ones(1)}, base / "foreign.pt")
    return {"root": synthetic_root, "run": run, "base": base, "corrupt": corrupt, "victim": victim.name,
            "empty": empty}


def _nan_loss(monkeypatch):
    from segbench.engine.losses import SegmentationLoss

    monkeypatch.setattr(SegmentationLoss, "forward", lambda self, out, target: out["out"].sum() * float("nan"))


def _save_fails(error):
    def patch(monkeypatch):
        from segbench.engine import checkpoint

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(checkpoint.torch, "save", fail)
    return patch


def _eval_write_fails(monkeypatch):
    from segbench import record

    def fail(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(record, "write_json", fail)


RESUME = ["trainer.resume={run}"]
# (id, arguments, substrings of the one message: the problem and what to do, patch)
CASES = [
    ("max_iters_text", ["train", *TRAIN, "trainer.max_iters=abc"], ["trainer.max_iters must be a positive integer", "'abc'"], None),
    ("max_iters_zero", ["train", *TRAIN, "trainer.max_iters=0"], ["trainer.max_iters must be a positive integer, got 0"], None),
    ("max_iters_negative", ["train", *TRAIN, "trainer.max_iters=-5"], ["trainer.max_iters must be a positive integer, got -5"], None),
    ("lr_text", ["train", *TRAIN, "optim.lr=abc"], ["optim.lr must be a positive number", "'abc'"], None),
    ("lr_negative", ["train", *TRAIN, "optim.lr=-1"], ["optim.lr must be a positive number, got -1"], None),
    ("val_interval_zero", ["train", *TRAIN, "trainer.val_interval=0"], ["trainer.val_interval must be a positive integer"], None),
    ("workers_negative", ["train", *TRAIN, "data.num_workers=-1"], ["data.num_workers must be auto or an integer >= 0, got -1"], None),
    ("batch_zero", ["train", *TRAIN, "data.batch_size=0"], ["data.batch_size must be a positive integer"], None),
    ("batch_below_processes", ["train", *TRAIN, "trainer.devices=8"], ["data.batch_size=4", "trainer.devices=8"], None),
    ("checkpoint_interval_zero", ["train", *TRAIN, "trainer.checkpoint_interval=0"],
     ["trainer.checkpoint_interval must be a positive integer or null"], None),
    ("checkpoint_minutes_text", ["train", *TRAIN, "trainer.checkpoint_minutes=soon"],
     ["trainer.checkpoint_minutes must be a positive number or null"], None),
    ("crop_zero", ["train", *TRAIN, "data.transforms.train.crop_size=[0,32]"],
     ["data.transforms.train.crop_size must be [height, width] of positive integers"], None),
    ("resume_not_a_path", ["train", *TRAIN, "trainer.resume=5"], ["trainer.resume must be true, false, auto or a run dir"], None),
    ("experiment_with_other_model", ["train", "experiment=segnet_vgg16_camvid", "model=unet_small"],
     ["experiment=segnet_vgg16_camvid", "model=unet_small", "paper=null"], None),
    ("class_weights_file_missing", ["train", *TRAIN, "loss.class_weights=${{class_weights:{base}/nope.json}}"],
     ["class-weight file not found", "segbench data stats"], None),
    ("cfg_resolve_class_weights", ["train", "--cfg", "job", "--resolve", "loss.class_weights=${{class_weights:{base}/nope.json}}"],
     ["class-weight file not found", "segbench data stats"], None),
    ("unknown_model", ["train", "model=nonet"], ["model/nonet", "unet_small"], None),
    ("unknown_key", ["train", *TRAIN, "trainer.max_iter=3"], ["trainer.max_iter", "+trainer.max_iter"], None),
    ("override_syntax", ["train", *TRAIN, "trainer.max_iters=[1"], ["trainer.max_iters=[1", "override_grammar"], None),
    ("missing_data_root", ["train", "data=voc", "model=unet_small", "data.root={base}/nowhere"],
     ["nowhere", "JPEGImages", "data.root=<dir>"], None),
    ("empty_split_list", ["train", *TINY_SYNTHETIC, "data.root={empty}"], ["no samples found", "train.txt"], None),
    ("corrupt_image_in_worker", ["train", *TINY_SYNTHETIC, "data.root={corrupt}", "data.num_workers=2", "trainer.max_iters=2"],
     ["{victim}", "corrupt or unreadable"], None),
    ("rerun_into_run", ["train", *TRAIN, "run_dir={run}"],
     ["already holds a run", "trainer.resume=true run_dir=", "trainer.overwrite=true", "another run_dir="], None),
    ("resume_without_run_dir", ["train", *TRAIN, "trainer.resume=true"],
     ["new timestamped directory", "pass run_dir=<the run> or trainer.resume=<the run>"], None),
    ("resume_missing_dir", ["train", *TRAIN, "trainer.resume={base}/nope"], ["no run directory or checkpoint file", "nope"], None),
    ("resume_changes_lr", ["train", *TRAIN, *RESUME, "optim.lr=1000000"],
     ["optim.lr: 0.003 -> 1000000", "Only trainer.max_iters may change"], None),
    ("resume_shortens_run", ["train", *TRAIN, *RESUME, "trainer.max_iters=1"],
     ["already at iteration 2", "larger trainer.max_iters"], None),
    ("nan_loss_on_resume", ["train", *TRAIN, *RESUME, "trainer.max_iters=4"], ["loss became nan", "lower optim.lr"], _nan_loss),
    ("read_only_run_dir", ["train", *TRAIN, *RESUME, "trainer.max_iters=4"],
     ["cannot write checkpoint", "Read-only file system", "is intact", "trainer.resume="],
     _save_fails(OSError(errno.EROFS, "Read-only file system"))),
    ("disk_full_checkpoint", ["train", *TRAIN, *RESUME, "trainer.max_iters=4"],
     ["cannot write checkpoint", "file write failed", "free disk space"],
     _save_fails(RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                              "data/3: file write failed"))),
    ("eval_disk_full", ["eval", "run={run}", "progress=false"], ["No space left on device", "free some disk space"],
     _eval_write_fails),
    ("eval_no_arguments", ["eval"], ["say which model to evaluate", "run=<run dir>"], None),
    ("eval_run_typo", ["eval", "run={base}/typo/run"], ["run directory not found", "typo"], None),
    ("eval_which_missing", ["eval", "run={run}", "which=nope.pt"], ["no checkpoint nope.pt", "best.pt, last.pt", "which="], None),
    ("eval_random_bytes", ["eval", "ckpt={base}/random.pt"], ["not a segbench checkpoint: {base}/random.pt"], None),
    ("eval_empty_file", ["eval", "ckpt={base}/empty.pt"], ["not a segbench checkpoint: {base}/empty.pt"], None),
    ("eval_foreign_file", ["eval", "ckpt={base}/foreign.pt"], ["not a segbench checkpoint: {base}/foreign.pt"], None),
    ("data_misspelled_action", ["data", "chek"], ["unknown action 'chek'", "check", "prepare", "stats"], None),
    ("unknown_verb", ["trian"], ["unknown verb 'trian'", "train"], None),
]


def _digest(run: Path) -> dict:
    """sha256 of the checkpoints and of run.json's training part and evaluations (a failed resume
    may record its status, "failed", never change what was trained or measured)."""
    import json

    record = json.loads((run / "run.json").read_text())
    measured = json.dumps([record["training"], record["evaluations"]], sort_keys=True).encode()
    return {**{name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in RUN_FILES},
            "run.json training": hashlib.sha256(measured).hexdigest()}


def _tree(path: Path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_message(case, world, tmp_path, monkeypatch, capsys):
    from segbench import cli

    name, args, expected, patch = case
    fill = {k: v for k, v in world.items()}
    args = [a.format(**fill) for a in args]
    expected = [e.format(**fill) for e in expected]
    monkeypatch.chdir(tmp_path)  # stray files would land here
    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(sys, "argv", ["segbench"])
    if patch:
        patch(monkeypatch)
    before, outside = _digest(world["run"]), _tree(world["base"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    out = capsys.readouterr()
    assert exit_.value.code == 2, out.err[-2000:]
    assert "Traceback" not in out.err + out.out and "Original Traceback" not in out.err
    assert out.err.count("error:") == 1 or name in ("data_misspelled_action", "unknown_verb"), out.err
    for text in expected:
        assert text in out.err, f"{text!r} not in {out.err[-1500:]!r}"
    assert _digest(world["run"]) == before, "a previously written checkpoint or record changed"
    assert _tree(tmp_path) == set(), f"left behind: {_tree(tmp_path)}"  # no run dir, no eval.log/train.log
    after = _tree(world["base"])
    assert after - outside <= {"run/tb", *{p for p in after if p.startswith("run/tb/")}}, after - outside


def test_label_values_outside_the_encoding_are_reported_once(synthetic_root, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from segbench.data.synthetic import SyntheticShapes

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    dataset = SyntheticShapes(root, "train", num_train=32, num_val=8, image_size=32)
    label_path = dataset.samples[0][1]
    with Image.open(label_path) as img:
        label = np.array(img)
        palette = img.getpalette()
    label[:2, :3] = 200  # 6 pixels of a value the 6-class encoding does not have
    out = Image.fromarray(label, mode="P")
    out.putpalette(palette)
    out.save(label_path)
    first = dataset.load(0)[1]
    dataset.load(0)
    err = capsys.readouterr().err
    assert err.count(str(label_path)) == 1 and "[200]" in err and "6 pixels" in err
    assert (first[:2, :3] == 255).all()  # trained as ignore, and said so
