"""Nothing the user owns is lost, and every setting is honoured or refused (docs/safety.md).

Each case runs ``segbench.cli.main`` in this process on a tiny synthetic run and checks what a
user would: the exit status, that no traceback was printed, the sha256 of every file that must not
change, and what was (not) written.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import TINY_SYNTHETIC, compose_train

pytestmark = pytest.mark.slow


def sha256s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def segbench(capsys, *args: str) -> tuple[int, str, str]:
    """``segbench <args>`` in this process: (exit status, stdout, stderr)."""
    from segbench import cli

    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err, out.err[-2000:]
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """A finished 2-iteration run (last.pt, best.pt, run.json); tests work on copies of it."""
    from segbench.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("safety") / "run"
    Trainer(compose_train([*TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=2",
                           "trainer.val_interval=2"]), run).fit()
    return run


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    monkeypatch.chdir(tmp_path)  # a relative default (data/synthetic) would land here
    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("SEGBENCH_DATA", raising=False)
    monkeypatch.setattr(sys, "argv", ["segbench"])
    return copy


def photos(folder: Path, n: int = 3) -> Path:
    """The user's own images: ``p0.png``, ``p1.png``, ..."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return folder


# ---- 1. nothing the user owns is overwritten without being asked ---------------------------------
def test_predict_never_writes_over_its_inputs_or_existing_files(run, tmp_path, capsys):
    inputs = photos(tmp_path / "photos")
    before = sha256s(inputs)
    for output in (inputs, inputs / "pred"):
        code, _, err = segbench(capsys, "predict", f"run={run}", f"input={inputs}", f"output={output}", "progress=false")
        assert code == 2 and "folder of the input images" in err, err
    assert sha256s(inputs) == before and not (inputs / "pred").exists()

    out = tmp_path / "out"
    out.mkdir()
    (out / "p1.png").write_bytes(b"the user's own file")
    code, _, err = segbench(capsys, "predict", f"run={run}", f"input={inputs}", f"output={out}", "progress=false")
    assert code == 2 and "already holds 1 file(s) this would write: p1.png" in err and "overwrite=true" in err
    assert sorted(p.name for p in out.iterdir()) == ["p1.png"]  # refused before writing anything
    assert (out / "p1.png").read_bytes() == b"the user's own file"

    code, _, _ = segbench(capsys, "predict", f"run={run}", f"input={inputs}", f"output={out}", "progress=false",
                          "overwrite=true")
    assert code == 0 and (out / "p1.png").read_bytes() != b"the user's own file" and (out / "legend.png").is_file()


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run, synthetic_root, tmp_path, capsys):
    from segbench.engine.checkpoint import load_checkpoint

    empty = tmp_path / "empty_list"  # the new run fails its data check: no train samples
    shutil.copytree(synthetic_root, empty)
    (empty / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    before = sha256s(run)
    args = ["train", *TINY_SYNTHETIC, f"run_dir={run}", "trainer.overwrite=true", "trainer.max_iters=3",
            "trainer.val_interval=3"]
    code, _, err = segbench(capsys, *args, f"data.root={empty}")
    assert code == 2 and "no samples found" in err and "previous run" in err
    assert sha256s(run) == before, "the old run changed although the new one never started"

    code, out, _ = segbench(capsys, *args, f"data.root={synthetic_root}")
    assert code == 0 and "set aside" in out
    assert load_checkpoint(run / "last.pt")["iteration"] == 3 and not (run / ".segbench-replaced").exists()


def test_eval_prints_the_scores_before_recording_and_says_where_else_they_can_go(run, tmp_path, capsys,
                                                                                  monkeypatch):
    import errno
    import json

    from segbench import record

    real_write = record.write_json

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(record, "write_json", read_only)
    before = sha256s(run)
    code, out, err = segbench(capsys, "eval", f"run={run}", "progress=false")
    assert code == 2 and "mIoU" in out and "triangle" in out, out  # the table was printed
    assert "not recorded" in err and "output=<file.json>" in err
    assert sha256s(run) == before
    monkeypatch.setattr(record, "write_json", real_write)

    target = tmp_path / "scores.json"
    code, out, _ = segbench(capsys, "eval", f"run={run}", "progress=false", f"output={target}")
    assert code == 0 and f"wrote {target}" in out and sha256s(run) == before
    (evaluation,) = json.loads(target.read_text())["evaluations"]
    assert evaluation["split"] == "val" and 0 <= evaluation["scores"]["mIoU"] <= 1
    code, _, err = segbench(capsys, "eval", f"run={run}", "progress=false", f"output={target}")
    assert code == 2 and "does not replace it" in err


# ---- 2. every setting honoured or refused ----------------------------------------------------------
@pytest.mark.parametrize("form", ["data_root={}", 'overrides=["data.root={}"]'])
def test_eval_reads_the_data_where_data_root_points(form, run, synthetic_root, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_root, moved)
    first_val = (moved / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (moved / "JPEGImages" / f"{first_val}.jpg").write_bytes(b"not a jpeg")  # only the moved copy has it
    code, _, err = segbench(capsys, "eval", f"run={run}", "progress=false", form.format(moved))
    assert code == 2 and f"{moved}/JPEGImages/{first_val}.jpg" in err, err


def test_predict_refuses_overrides_it_would_ignore(run, tmp_path, capsys):
    inputs = photos(tmp_path / "photos", 1)
    code, _, err = segbench(capsys, "predict", f"run={run}", f"input={inputs}", f"output={tmp_path / 'out'}",
                            'overrides=["data.num_classes=11"]', "progress=false")
    assert code == 2 and "data.num_classes=11 (the checkpoint fixes" in err and not (tmp_path / "out").exists()


def test_predict_skips_a_truncated_image_instead_of_predicting_on_grey(run, tmp_path, capsys):
    inputs = photos(tmp_path / "photos", 2)
    whole = (inputs / "p0.png").read_bytes()
    (inputs / "p0.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    code, stdout, err = segbench(capsys, "predict", f"run={run}", f"input={inputs}", f"output={out}", "progress=false")
    assert code == 0 and "p0.png: truncated image" in stdout + err and "skipped 1" in stdout
    assert not (out / "p0_color.png").exists() and (out / "p1_color.png").is_file()


def test_a_checkpoint_file_warm_starts_a_new_run_with_another_lr(run, tmp_path, capsys):
    from segbench.engine.checkpoint import load_checkpoint

    before = sha256s(run)
    new = tmp_path / "warm"
    code, out, _ = segbench(capsys, "train", *TINY_SYNTHETIC, f"trainer.resume={run}/last.pt", "optim.lr=0.001",
                            f"run_dir={new}", "trainer.max_iters=2", "trainer.val_interval=2",
                            f"data.root={load_checkpoint(run / 'last.pt')['config']['data']['root']}")
    assert code == 0 and "warm start" in out
    config = load_checkpoint(new / "last.pt")["config"]
    assert config["optim"]["lr"] == 0.001 and config["model"]["init_from"] == f"{run}/last.pt"
    assert sha256s(run) == before


def test_a_crop_larger_than_every_image_is_reported(run, synthetic_root, tmp_path, capsys):
    code, _, err = segbench(capsys, "train", *TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=1",
                            "trainer.val_interval=1", "data.transforms.train.crop_size=[64,64]")
    assert code == 0 and "crop_size=[64, 64] is larger than every training image" in err and "75%" in err


# ---- 3. a resume continues with the run's own configuration ------------------------------------------
def test_a_bare_resume_continues_with_the_saved_config(run, tmp_path, capsys):
    from segbench.engine.checkpoint import load_checkpoint

    code, _, err = segbench(capsys, "train", f"trainer.resume={run}", "trainer.max_iters=3", "trainer.val_interval=3")
    assert code == 0, err
    assert load_checkpoint(run / "last.pt")["iteration"] == 3
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_a_run_saved_before_a_key_existed_resumes_with_its_default(run, capsys):
    """A run written by an earlier segbench lacks keys the schema (segbench/engine/config.py) has
    since typed: the resume takes today's default for them instead of failing on the first read."""
    import torch

    from segbench.engine.checkpoint import load_checkpoint

    state = load_checkpoint(run / "last.pt")
    for part, key in (("trainer", "sync_bn"), ("trainer", "num_vis"), ("data", "isbi_membrane_class"),
                      ("eval_protocol", "window_batch")):
        del state["config"][part][key]
    torch.save(state, run / "last.pt")
    code, _, err = segbench(capsys, "train", f"trainer.resume={run}", "trainer.max_iters=3", "trainer.val_interval=3")
    assert code == 0, err
    assert load_checkpoint(run / "last.pt")["config"]["trainer"]["sync_bn"] == "auto"


def test_a_resume_compares_only_what_was_typed_before_any_data_is_made(run, tmp_path, capsys):
    before = sha256s(run)
    code, _, err = segbench(capsys, "train", f"trainer.resume={run}", "optim.lr=1")
    assert code == 2 and "these overrides would change it: optim.lr: 0.003 -> 1." in err, err
    assert sha256s(run) == before and not (tmp_path / "data").exists()  # nothing generated before the refusal


def test_a_resume_checks_the_saved_config_it_now_trains_with(run, tmp_path, capsys):
    """The run's saved config is instantiated on resume: a `_target_` outside segbench's tree is
    refused as for any other config (docs: Security), before anything is built."""
    import torch

    from segbench.engine.checkpoint import load_checkpoint

    state = load_checkpoint(run / "last.pt")
    state["config"]["model"]["_target_"] = "os.system"
    torch.save(state, run / "last.pt")
    before = sha256s(run)
    code, _, err = segbench(capsys, "train", f"trainer.resume={run}", "trainer.max_iters=3")
    assert code == 2 and "model._target_='os.system'" in err and "its saved config" in err, err
    assert sha256s(run) == before
