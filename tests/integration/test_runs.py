"""`segbench runs`: status, iterations and best mIoU of every run, from the run dirs' files."""
import json
from pathlib import Path

from omegaconf import OmegaConf

from segbench import runs


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def metrics(iteration, max_iters, miou, best, finished):
    return {"mIoU": miou, "iteration": iteration,
            "run": {"model": "segbench.models.unet.UNet", "data": "camvid", "iterations": iteration,
                    "max_iters": max_iters, "finished": finished, "best_mIoU": best}}


def test_runs_lists_status_iterations_and_best_miou(tmp_path, capsys):
    root = tmp_path / "runs"
    write(root / "camvid/segnet/a/metrics.json", metrics(100, 100, 0.50, 0.55, True))
    write(root / "camvid/segnet/a/.hydra/hydra.yaml", "hydra:\n  runtime:\n    choices:\n      model: segnet\n      data: camvid\n")
    write(root / "camvid/unet/b/metrics.json", metrics(40, 100, 0.30, 0.31, False))
    write(root / "camvid/unet/c/.hydra/config.yaml", "model: {}\n")  # just started: no checkpoint yet
    write(root / "sweep/t/data=camvid,model=fcn8s/sweep_job.json", {"status": "failed", "error": "NaN loss"})
    rows = runs.run(OmegaConf.create({"runs": str(root), "sort": "miou"}))
    by_dir = {Path(r["dir"]).name: r for r in rows}
    assert {k: v["status"] for k, v in by_dir.items()} == {
        "a": "done", "b": "unfinished", "c": "started", "data=camvid,model=fcn8s": "failed"}
    assert [Path(r["dir"]).name for r in rows][:2] == ["a", "b"]  # best mIoU first
    out = capsys.readouterr().out
    assert "segnet" in out and "100/100" in out and "55.00" in out and "40/100" in out
    assert "4 run(s): 1 done, 1 failed, 1 started, 1 unfinished" in out
    done = runs.run(OmegaConf.create({"runs": str(root), "sort": "name", "status": "done"}))
    assert [Path(r["dir"]).name for r in done] == ["a"]


def test_multirun_job_dirs_are_named_by_what_varied(monkeypatch):
    args = ["--multirun", "model=fcn8s,segnet", "data=camvid", "eval_protocol.scales=[0.5,1.0]",
            "optim.lr=range(0.01,0.03,0.01)", "data.root=/data/camvid", "hydra.sweep.dir=x,y"]
    assert runs.swept_keys(args) == ["model", "optim.lr"]  # a list value is not a sweep
    monkeypatch.setenv(runs.SWEPT_ENV, "model,data")
    assert runs.job_dir_name(["model=fcn8s", "data=camvid", "trainer.max_iters=9"], 0) == "model=fcn8s,data=camvid"
    monkeypatch.delenv(runs.SWEPT_ENV)  # no record of the sweep: every override but paths and switches
    assert runs.job_dir_name(["data.root=/a/b", "loss.class_weights=w/c.json"], 3) == "loss.class_weights=w_c.json"
    assert runs.job_dir_name([], 3) == "job3"
    long = runs.job_dir_name([f"k{i}=v{i}" for i in range(40)], 0)
    assert len(long) == runs.MAX_NAME and long != runs.job_dir_name([f"k{i}=v{i}" for i in range(41)], 0)
