"""`segbench sweep`: a grid of runs, one table; failures recorded; a rerun finishes only what is missing.

The sweeps run `segbench.cli.main` in this process (`cli_in_process`, Hydra's basic launcher runs
the jobs here too), so the Trainer.fit wrapper that logs, fails or interrupts jobs is a monkeypatch."""
import csv
import json

import pytest

from segbench.record import RunRecord
from tests.conftest import TINY_SYNTHETIC, compose

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # as OMP_NUM_THREADS=1 did

@pytest.fixture
def sweep(cli_in_process, monkeypatch):
    """`segbench sweep` (in this process) with Trainer.fit wrapped: it logs every job it trains,
    can fail a job once (fail_once = job dir prefix) and can stop the whole sweep like Ctrl-C
    before the N-th job of that command (interrupt_at)."""
    from segbench.engine import trainer

    original = trainer.Trainer.fit

    def run(tmp_path, synthetic_root, sweep_dir, fail_once=None, interrupt_at=0):
        log, calls = tmp_path / "trained.log", []

        def fit(self):
            calls.append(self.run_dir.name)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            with log.open("a") as f:
                f.write(self.run_dir.name + "\n")
            marker = log.parent / ("failed_" + self.run_dir.name)
            if fail_once and self.run_dir.name.startswith(fail_once) and not marker.exists():
                marker.write_text("x")
                raise RuntimeError("simulated failure")
            return original(self)

        monkeypatch.setattr(trainer.Trainer, "fit", fit)
        return cli_in_process("sweep", "model=unet_small,segnet", "optim.lr=0.01,0.02", *TINY_SYNTHETIC,
                              f"data.root={synthetic_root}", "trainer.max_iters=2", "trainer.val_interval=2",
                              f"hydra.sweep.dir={sweep_dir}")

    return run


def trained(tmp_path) -> list[str]:
    log = tmp_path / "trained.log"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return names


def test_grid_gives_one_run_dir_per_job_and_one_table_with_failures_recorded(sweep, tmp_path, synthetic_root):
    sweep_dir = tmp_path / "sweep"
    out = sweep(tmp_path, synthetic_root, sweep_dir, fail_once="model=segnet,optim.lr=0.02")
    assert out.returncode == 1, out.stderr[-3000:]  # a job failed: non-zero, but after every job and the table
    assert "simulated failure" in out.stderr and "hydra.sweep.dir=" in out.stderr
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())  # named by what varied
    assert jobs == ["model=segnet,optim.lr=0.01", "model=segnet,optim.lr=0.02", "model=unet_small,optim.lr=0.01", "model=unet_small,optim.lr=0.02"]
    for job in ("model=unet_small,optim.lr=0.01", "model=unet_small,optim.lr=0.02", "model=segnet,optim.lr=0.01"):
        record = RunRecord.load(sweep_dir / job)
        assert record.status == "finished" and (sweep_dir / job / "last.pt").is_file()
    assert "RuntimeError: simulated failure" in (sweep_dir / "model=segnet,optim.lr=0.02" / "error.txt").read_text()
    failed = RunRecord.load(sweep_dir / "model=segnet,optim.lr=0.02")
    assert failed.status == "failed" and failed.error == "RuntimeError: simulated failure"
    assert failed.sweep.overrides[:2] == ["model=segnet", "optim.lr=0.02"]

    table = (sweep_dir / "summary.md").read_text().strip().splitlines()
    assert table[0].startswith("| job | model | optim.lr | status | mIoU")  # what varied comes first
    assert len(table) == 2 + 4
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [(r["model"], r["optim.lr"], r["status"]) for r in rows] == [
        ("segnet", "0.01", "done"), ("segnet", "0.02", "failed"),
        ("unet_small", "0.01", "done"), ("unet_small", "0.02", "done")]
    assert rows[1]["mIoU"] == "" and "simulated failure" in rows[1]["error"]  # no number for a failed run
    for r in rows:  # each done row carries its own job's measured number, as its run.json has it
        if r["status"] == "done":
            measured = RunRecord.load(sweep_dir / r["job"]).training.validation.scores["mIoU"]
            assert float(r["mIoU"]) == round(100 * measured, 2) and 0 <= measured <= 1, r
    assert len(json.loads((sweep_dir / "summary.json").read_text())["rows"]) == 4
    assert "| segnet | 0.02 | failed |" in out.stdout

    # The same command again: the three finished jobs are skipped, the failed one is retried.
    assert trained(tmp_path) == ["model=unet_small,optim.lr=0.01", "model=unet_small,optim.lr=0.02", "model=segnet,optim.lr=0.01", "model=segnet,optim.lr=0.02"]
    again = sweep(tmp_path, synthetic_root, sweep_dir, fail_once="model=segnet,optim.lr=0.02")
    assert again.returncode == 0, again.stderr[-3000:]
    assert trained(tmp_path) == ["model=segnet,optim.lr=0.02"]
    assert "already finished, skipped" in again.stdout
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 4
    assert RunRecord.load(sweep_dir / "model=segnet,optim.lr=0.02").sweep.attempts == 2


def test_interrupted_sweep_reruns_only_the_missing_jobs(sweep, tmp_path, synthetic_root):
    sweep_dir = tmp_path / "sweep"
    out = sweep(tmp_path, synthetic_root, sweep_dir, interrupt_at=3)  # Ctrl-C as the third job starts
    assert out.returncode == 130, out.stderr[-3000:]
    assert trained(tmp_path) == ["model=unet_small,optim.lr=0.01", "model=unet_small,optim.lr=0.02"]
    assert not (sweep_dir / "summary.md").exists()
    again = sweep(tmp_path, synthetic_root, sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert trained(tmp_path) == ["model=segnet,optim.lr=0.01", "model=segnet,optim.lr=0.02"]
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}


def compose_sweep(overrides):
    return compose("sweep", overrides, hydra_cfg=True)


def test_launchers_by_config(cli_in_process):
    cfg = compose_sweep(["experiment=fcn8s_vgg16_voc"])
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    assert cfg.hydra.callbacks.aggregate._target_ == "segbench.app.sweep.AggregateCallback"
    assert cfg.paper.experiment == "fcn8s_vgg16_voc" and cfg.smoke is False  # the train config + sweep keys
    joblib = compose_sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher") and joblib.hydra.launcher.n_jobs == 2
    out = cli_in_process("sweep", "experiment=deeplabv3_r101_voc_aug", "hydra/launcher=slurm",
                         "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SlurmLauncher" in out.stdout and "partition: gpu" in out.stdout and "gpus_per_node: 1" in out.stdout
