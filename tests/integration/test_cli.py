"""The CLI end to end: composition, overrides, errors a user can cause, train -> eval agreement.

The commands run `segbench.cli.main` in this process (`cli_in_process`): what they print, write
and exit with is the same as from a shell, without a torch + Hydra import per call. Two tests
keep a real process: a user error's exit status and stderr through the interpreter, and an
installed (non-editable) copy of the package."""
import json
import sys

import pytest
import torch

from segbench.record import RunRecord
from tests.conftest import TINY_SYNTHETIC

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny nets, in this process


def tiny(synthetic_root, *extra):
    return [*TINY_SYNTHETIC, f"data.root={synthetic_root}", *extra]


def test_help_lists_every_verb(cli_in_process):
    out = cli_in_process("--help")
    assert out.returncode == 0
    for verb in ("train", "eval", "report", "sweep", "bench", "data"):
        assert f"  {verb}" in out.stdout


def test_overrides_compose_and_cfg_job_prints_them(cli_in_process):
    out = cli_in_process("train", "model=unet", "data=synthetic", "optim.lr=0.02", "trainer.max_iters=100",
                         "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "lr: 0.02" in out.stdout and "max_iters: 100" in out.stdout
    assert "_target_: segbench.models.unet.UNet" in out.stdout


def test_unknown_model_lists_choices(cli_in_process):
    out = cli_in_process("train", "model=nonet", "--cfg", "job")
    assert out.returncode != 0
    assert "nonet" in out.stderr and "unet" in out.stderr and "pspnet" in out.stderr


def test_missing_data_root_is_one_clear_message(cli, tmp_path):
    """Through a real interpreter: the process exits 2 with the message and no traceback."""
    missing = tmp_path / "nowhere"
    out = cli("train", "data=voc", f"data.root={missing}", "model=unet_small")
    assert out.returncode == 2
    assert str(missing) in out.stderr and "JPEGImages" in out.stderr and "host.robots.ox.ac.uk" in out.stderr
    assert "Traceback" not in out.stderr


def test_corrupt_image_names_the_file(cli_in_process, synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "JPEGImages").iterdir())[-1]  # a val image: validation reads them all
    victim.write_bytes(b"not a jpeg")
    out = cli_in_process("train", *tiny(root, "trainer.max_iters=1", "trainer.val_interval=1"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert victim.name in out.stderr and "Traceback" not in out.stderr


def test_train_then_eval_print_the_same_numbers(cli_in_process, synthetic_root, tmp_path):
    run = tmp_path / "run"
    out = cli_in_process("train", *tiny(synthetic_root, "trainer.max_iters=4", "trainer.val_interval=4",
                                        f"run_dir={run}"))
    assert out.returncode == 0, out.stderr[-3000:]
    record = RunRecord.load(run)
    trained = record.training.validation.scores
    assert record.status == "finished" and (record.iteration, record.max_iters) == (4, 4)
    assert record.choices["model"] == "unet_small" and record.choices["data"] == "synthetic"  # as typed
    assert {"last.pt", "best.pt", "run.json"} <= {p.name for p in run.iterdir()}
    assert (run / ".hydra" / "config.yaml").is_file() and any((run / "tb").iterdir())
    training_before = json.loads((run / "run.json").read_text())["training"]
    out = cli_in_process("eval", f"run={run}", "which=last.pt")
    assert out.returncode == 0, out.stderr[-3000:]
    after = json.loads((run / "run.json").read_text())
    assert after["training"] == training_before, "eval must not change training's record"
    (evaluated,) = RunRecord.load(run).evaluations
    assert evaluated.source == "eval" and evaluated.checkpoint.endswith("last.pt")
    for key in ("mIoU", "aAcc", "mAcc", "fwIoU"):
        assert evaluated.scores[key] == pytest.approx(trained[key], abs=1e-12), key
    assert f"mIoU {100 * trained['mIoU']:6.2f}" in out.stdout
    again = cli_in_process("eval", f"run={run}", "which=last.pt")  # the same setting again replaces its entry
    assert again.returncode == 0 and len(RunRecord.load(run).evaluations) == 1

    report = cli_in_process("report", f"runs={tmp_path}")
    assert report.returncode == 0 and "| run |" in report.stdout
    assert "scored by train" in report.stdout and "[eval val, SS, last.pt]" in report.stdout  # both records
    listed = cli_in_process("runs", f"runs={tmp_path}")
    assert listed.returncode == 0 and "unet_small" in listed.stdout  # the config name the user chose


def test_eval_missing_or_incompatible_checkpoint(cli_in_process, tmp_path):
    out = cli_in_process("eval", f"ckpt={tmp_path / 'nope.pt'}")
    assert out.returncode == 2 and "checkpoint not found" in out.stderr and "Traceback" not in out.stderr

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    out = cli_in_process("eval", f"ckpt={foreign}")
    assert out.returncode == 2 and "not a segbench checkpoint" in out.stderr

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    out = cli_in_process("eval", f"ckpt={garbage}")
    assert out.returncode == 2 and f"not a segbench checkpoint: {garbage}" in out.stderr


def test_eval_checkpoint_of_another_model_is_refused(tmp_path, synthetic_root):
    """A checkpoint whose weights don't fit the config's model names both."""
    from segbench import build_model
    from segbench.engine.checkpoint import load_model_weights
    from segbench.errors import CheckpointError

    small = build_model("unet", 6, base_channels=4)
    state = {"model": build_model("unet", 6, base_channels=8).state_dict(),
             "config": {"model": {"_target_": "segbench.models.unet.UNet"}}}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_model_weights(small, state, tmp_path / "x.pt")


def test_multirun_runs_each_job(cli_in_process, synthetic_root, tmp_path):
    out = cli_in_process("train", "--multirun", *tiny(synthetic_root, "trainer.max_iters=1", "trainer.val_interval=1"),
              "optim.lr=0.01,0.02", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((tmp_path / "sweep").rglob("run.json"))) == 2


def test_non_editable_install_runs_train(tmp_path, synthetic_root):
    """`pip install .` (a built wheel, not the source tree) ships conf/ and can train."""
    import subprocess

    from tests.conftest import REPO, run_cli

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True, text=True)
    assert (target / "segbench" / "conf" / "train.yaml").is_file()
    assert not (target / "segbench" / "conf" / "train.yaml").is_symlink()
    env = {"PYTHONPATH": str(target), "SEGBENCH_RUNS": str(tmp_path / "runs")}
    where = subprocess.run([sys.executable, "-c", "import segbench; print(segbench.__file__)"],
                           cwd=tmp_path, env={**__import__('os').environ, **env}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    out = run_cli("train", *tiny(synthetic_root, "trainer.max_iters=1", "trainer.val_interval=1"),
                  cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
