"""`segbench runs`: status, iterations and best mIoU of every run, from the run dirs' run.json."""
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from segbench.app import overrides, runs
from segbench.errors import SegbenchError
from segbench.record import Best, Evaluation, RunRecord, SweepJob, Training, TrainingSummary

UNET = {"model": {"_target_": "segbench.models.unet.UNet"}, "data": {"name": "camvid"}}


def write(path: Path, status, iteration, max_iters=100, miou=None, best=None, metric="mIoU", **extra) -> None:
    validation = None if miou is None else Evaluation("train", "val", {}, "SS", "last.pt", iteration,
                                                      {"mIoU": miou}, [])
    training = None if best is None else Training(TrainingSummary(best=Best(metric, best, iteration)), [], validation)
    RunRecord(status=status, iteration=iteration, max_iters=max_iters, config=UNET, training=training,
              **extra).save(path)


def test_runs_lists_status_iterations_and_best_miou(tmp_path, capsys):
    root = tmp_path / "runs"
    write(root / "camvid/segnet/a", "finished", 100, miou=0.50, best=0.55)
    write(root / "camvid/unet/b", "running", 40, miou=0.30, best=0.31)
    write(root / "camvid/unet/c", "running", 0)  # just started: no checkpoint yet
    write(root / "camvid/unet/d", "interrupted", 7, best=0.1)
    write(root / "sweep/t/data=camvid,model=fcn8s", "failed", 0, error="DivergedError: NaN loss",
          sweep=SweepJob(0, ["data=camvid", "model=fcn8s"]))
    rows = runs.run(OmegaConf.create({"runs": str(root), "sort": "miou"}))
    by_dir = {Path(r.name).name: r for r in rows}
    assert {k: v.status for k, v in by_dir.items()} == {
        "a": "done", "b": "unfinished", "c": "unfinished", "d": "interrupted", "data=camvid,model=fcn8s": "failed"}
    assert [Path(r.name).name for r in rows][:2] == ["a", "b"]  # best mIoU first
    out = capsys.readouterr().out
    assert "best mIoU" in out.splitlines()[0]
    assert "UNet" in out and "100/100" in out and "55.00" in out and "40/100" in out and "0/100" in out
    assert "5 run(s): 1 done, 1 failed, 1 interrupted, 2 unfinished" in out
    done = runs.run(OmegaConf.create({"runs": str(root), "sort": "name", "status": "done"}))
    assert [Path(r.name).name for r in done] == ["a"]
    with pytest.raises(SegbenchError, match="status must be one of done, unfinished"):
        runs.run(OmegaConf.create({"runs": str(root), "status": "started"}))


def test_runs_names_the_metric_each_best_was_kept_by(tmp_path, capsys):
    """SegNet-Basic keeps best.pt by aAcc (trainer.select_by): the column says so, never "best mIoU";
    runs kept by different metrics say it beside each number."""
    root = tmp_path / "runs"
    write(root / "segnet_basic", "finished", 100, miou=0.40, best=0.921, metric="aAcc")
    runs.run(OmegaConf.create({"runs": str(root)}))
    header, _, line = capsys.readouterr().out.splitlines()[:3]
    assert "best aAcc" in header and "best mIoU" not in header and "92.10" in line
    write(root / "unet", "finished", 100, miou=0.50, best=0.55)
    runs.run(OmegaConf.create({"runs": str(root)}))
    out = capsys.readouterr().out
    assert "best mIoU" not in out and "best aAcc" not in out.splitlines()[0]
    assert "92.10 aAcc" in out and "55.00 mIoU" in out


def test_multirun_job_dirs_are_named_by_what_varied():
    """Hydra's parser finds the swept keys; Hydra's override_dirname leaves out every other key
    (and paths and switches always); the folder name is made safe and bounded."""
    args = ["--multirun", "model=fcn8s,segnet", "data=camvid", "eval_protocol.scales=[0.5,1.0]",
            "optim.lr=range(0.01,0.03,0.01)", "data.root=/data/camvid", "hydra.sweep.dir=x,y"]
    assert overrides.swept_keys(args) == ["model", "optim.lr"]  # a list value is not a sweep
    *kept, exclude = overrides.multirun_arguments(args)
    assert kept == args and exclude.startswith(overrides.EXCLUDE_KEYS + "=")
    excluded = set(OverridesParser.create().parse_override(exclude).value())
    assert {"data", "eval_protocol.scales", *overrides.NOT_A_NAME} == excluded
    *_, exclude = overrides.multirun_arguments(["model=fcn8s", "data.root=/a"])  # nothing swept: all but paths
    assert set(OverridesParser.create().parse_override(exclude).value()) == set(overrides.NOT_A_NAME)
    assert overrides.job_dir_name("loss.class_weights=w/c.json", 3) == "loss.class_weights=w_c.json"
    assert overrides.job_dir_name(".hidden=1", 3) == "_hidden=1"
    assert overrides.job_dir_name("", 3) == "job3"
    long = overrides.job_dir_name(",".join(f"k{i}=v{i}" for i in range(40)), 0)
    assert len(long) == overrides.MAX_NAME
    assert long != overrides.job_dir_name(",".join(f"k{i}=v{i}" for i in range(41)), 0)
