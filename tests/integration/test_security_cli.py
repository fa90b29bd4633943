"""Crafted files from someone else, through the real CLI (issue 15): each command exits 2 with one
message, no traceback, and the file the payload would create does not exist afterwards.

The commands run `segbench.cli.main` in this process (`cli_in_process`): a payload that ran would
create its file all the same, and a traceback would fail the test as an uncaught exception."""

import pytest
from omegaconf import OmegaConf

from segbench.engine.checkpoint import save_checkpoint
from tests.conftest import TINY_SYNTHETIC, compose_train
from tests.unit.test_security import pickle_with_payload

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # tiny nets, in this process


def refused(out, *expected: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, out.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]


def test_eval_refuses_a_pickle_payload(cli_in_process, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    pickle_with_payload(run / "best.pt", marker)
    out = cli_in_process("eval", f"run={run}")
    refused(out, f"not a segbench checkpoint: {run / 'best.pt'}", "trust_checkpoint=true")
    assert not marker.exists()


def test_report_and_runs_never_open_a_pickle_payload(cli_in_process, tmp_path):
    """Everything they show is in run.json: the checkpoint beside it is never opened."""
    from segbench.record import RunRecord

    run, marker = tmp_path / "runs" / "theirs", tmp_path / "pwned"
    RunRecord(status="finished", iteration=2, max_iters=2).save(run)
    pickle_with_payload(run / "best.pt", marker)
    pickle_with_payload(run / "last.pt", marker)
    out = cli_in_process("report", f"runs={tmp_path / 'runs'}", f"output={tmp_path / 'REPORT.md'}")
    assert out.returncode == 0 and "| theirs |" in out.stdout, out.stderr[-2000:]
    out = cli_in_process("runs", f"runs={tmp_path / 'runs'}")
    assert out.returncode == 0 and "theirs" in out.stdout, out.stderr[-2000:]
    assert not marker.exists()


def test_command_line_target_is_refused(cli_in_process, tmp_path, synthetic_root):
    marker = tmp_path / "pwned"
    out = cli_in_process("train", *TINY_SYNTHETIC, f"data.root={synthetic_root}", "model._target_=os.system",
              f"+model._args_=['touch {marker}']")
    refused(out, "model._target_='os.system'", "the command line")
    assert not marker.exists()


def test_eval_refuses_saved_config_target_and_dotdot_list_entry(cli_in_process, tmp_path):
    """A data-only checkpoint whose config says torch.save; then a VOC list with a '../' id
    for `eval save_predictions=color`: refused where the list is read, with file and line.
    (os.system in a saved config and `train trainer.resume=` are in tests/unit/test_security.py.)"""
    from segbench.engine.build import build_model
    from tests.fixtures.datasets import make_voc

    root = make_voc(tmp_path / "voc")
    cfg = compose_train(["data=voc", f"data.root={root}", "model=unet_small", "model.base_channels=4",
                         "data.num_workers=0", "trainer.progress=false", f"run_dir={tmp_path / 'run'}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    weights = build_model(cfg).state_dict()

    marker = tmp_path / "written_by_config"
    bad = {**config, "model": {"_target_": "torch.save", "_args_": [{}, str(marker)]}}
    save_checkpoint(tmp_path / "bad" / "best.pt", {"model": weights, "config": bad})
    out = cli_in_process("eval", f"ckpt={tmp_path / 'bad' / 'best.pt'}", "device=cpu")
    refused(out, "model._target_='torch.save'")
    assert not marker.exists()

    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    ids = (lists / "val.txt").read_text().split()
    (lists / "val.txt").write_text(f"{ids[0]}\n../../../../escaped\n")
    save_checkpoint(tmp_path / "ok" / "best.pt", {"model": weights, "config": config})
    out = cli_in_process("eval", f"ckpt={tmp_path / 'ok' / 'best.pt'}", "device=cpu", "save_predictions=color")
    refused(out, f"{lists / 'val.txt'} line 2", "'../../../../escaped'")
    assert not list(tmp_path.rglob("escaped*"))
