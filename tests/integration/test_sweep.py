"""`segbench sweep`: a grid of runs, one table; failures recorded; a rerun finishes only what is missing.

The sweeps run `segbench.cli.main` in this process (`cli_in_process`, Hydra's basic launcher runs
the jobs here too), so the Trainer.fit wrapper that logs, fails or interrupts jobs is a monkeypatch."""
import csv
import json
import os
import shlex

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
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
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
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
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


# ---- every job goes through the train service of `segbench train` ----------------------------------
def one_job(cli_in_process, synthetic_root, sweep_dir, *extra: str, env: dict | None = None):
    """A sweep with the tiny synthetic settings (one grid point unless ``extra`` sweeps)."""
    return cli_in_process("sweep", *TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=2",
                          "trainer.val_interval=2", f"hydra.sweep.dir={sweep_dir}", *extra, env=env)


def the_job(sweep_dir):
    """The directory of a one-point sweep's job."""
    job, = [p for p in sweep_dir.iterdir() if p.is_dir()]
    return job


def test_a_job_is_refused_what_train_refuses_and_the_sweep_goes_on(cli_in_process, tmp_path):
    """`experiment=X model=Y` would put Y's number beside X's paper: train refuses it before any work,
    and a sweep job records the same refusal (not a data error after building X's dataset)."""
    mixed = ["experiment=fcn8s_vgg16_voc", "model=unet_small"]
    train = cli_in_process("train", *mixed)
    assert train.returncode == 2 and "is compared with its paper's number" in train.stderr, train.stderr[-2000:]
    sweep_dir = tmp_path / "sweep"
    out = cli_in_process("sweep", *mixed, f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 1, out.stderr[-2000:]  # recorded, the table written, then status 1
    record = RunRecord.load(the_job(sweep_dir))
    assert record.status == "failed" and "is compared with its paper's number" in record.error, record.error
    assert "| failed |" in (sweep_dir / "summary.md").read_text()


def test_a_job_warns_of_a_crop_larger_than_every_image(cli_in_process, synthetic_root, tmp_path):
    out = one_job(cli_in_process, synthetic_root, tmp_path / "sweep", "data.transforms.train.crop_size=[64,64]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "crop_size=[64, 64] is larger than every training image" in out.stderr


def test_a_stopped_job_names_the_command_that_continues_it_in_its_own_dir(cli_in_process, synthetic_root,
                                                                          tmp_path, monkeypatch):
    """The job fails half-way, after a checkpoint: the resume command it was given (printed on a
    signal) is a sweep of this one grid point into this job dir, which continues last.pt there."""
    from segbench.engine import trainer

    original, given = trainer.Trainer.fit, []

    def fit(self):
        given.append(self.resume_command)
        if len(given) == 1:  # the first job stops at iteration 2 of 4 (last.pt written), then fails
            self.max_iters = 2
            original(self)
            raise RuntimeError("simulated failure after the checkpoint")
        return original(self)

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    sweep_dir = tmp_path / "sweep"
    out = one_job(cli_in_process, synthetic_root, sweep_dir, "optim.lr=0.01,0.02", "trainer.max_iters=4")
    assert out.returncode == 1 and "simulated failure" in out.stderr
    job = sweep_dir / "optim.lr=0.01"
    assert RunRecord.load(job).status == "failed" and (job / "last.pt").is_file()
    assert given[0] and given[0].startswith("segbench sweep ")
    command = shlex.split(given[0])
    assert command[:2] == ["segbench", "sweep"] and "optim.lr=0.01" in command
    assert f"hydra.sweep.dir='{sweep_dir.resolve()}'" in command and "hydra.sweep.subdir='optim.lr=0.01'" in command

    again = cli_in_process(*command[1:])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {job / 'last.pt'} at iteration 2" in again.stdout  # the job's own dir, continued
    record = RunRecord.load(job)
    assert record.status == "finished" and record.iteration == 4 and record.sweep.attempts == 2
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["optim.lr=0.01", "optim.lr=0.02"]


def test_a_job_refuses_to_train_into_another_run_dir(cli_in_process, synthetic_root, tmp_path):
    """trainer.resume=<run dir> would send every job of the grid into one directory."""
    other = tmp_path / "other"
    other.mkdir()
    out = one_job(cli_in_process, synthetic_root, tmp_path / "sweep", f"trainer.resume={other}")
    assert out.returncode == 1
    assert "a sweep job trains in its own directory" in RunRecord.load(the_job(tmp_path / "sweep")).error


def test_a_job_keeps_the_error_its_ranks_recorded(cli_in_process, synthetic_root, tmp_path, monkeypatch):
    """trainer.devices=2: the job is re-run as ranks of `segbench train` composed from the sweep
    config; when they fail, the job's record keeps rank 0's error, not torchrun's exit status."""
    from segbench.engine import distributed
    from segbench.record import edit

    launched = []

    def launch(verb, arguments, processes, run_dir, device_type):
        launched.append((verb, arguments, processes, run_dir))
        with edit(run_dir) as record:  # as rank 0 records a failure
            record.status, record.error = "failed", "DivergedError: NaN loss at iteration 1"
        return 1

    monkeypatch.setattr(distributed, "launch", launch)
    sweep_dir = tmp_path / "sweep"
    out = one_job(cli_in_process, synthetic_root, sweep_dir, "trainer.devices=2")
    assert out.returncode == 1
    (verb, arguments, processes, run_dir), = launched
    assert (verb, arguments[0], processes, run_dir) == ("train", "--config-name=sweep", 2, str(the_job(sweep_dir)))
    assert RunRecord.load(the_job(sweep_dir)).error == "DivergedError: NaN loss at iteration 1"


def test_a_smoke_job_with_two_devices_trains_through_torchrun_in_its_own_dir(cli, synthetic_root, tmp_path):
    """The ranks shrink the job as the sweep did (smoke=true: 2 iterations, not 5) and train the job's
    directory, whose record keeps the sweep's part."""
    sweep_dir = tmp_path / "sweep"
    out = cli("sweep", *TINY_SYNTHETIC, f"data.root={synthetic_root}", "smoke=true", "trainer.max_iters=5",
              "trainer.devices=2", f"hydra.sweep.dir={sweep_dir}", env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "launching 2 processes" in out.stdout
    job = the_job(sweep_dir)
    record = RunRecord.load(job)
    assert record.status == "finished" and record.iteration == 2 and record.sweep.attempts == 1
    assert record.training.summary.world_size == 2
    assert (job / "last.pt").is_file() and not (job / "best.pt").exists()  # smoke: best.pt removed


def test_only_rank_0_of_a_job_keeps_its_books(cli_in_process, synthetic_root, tmp_path, monkeypatch):
    """Under hydra/launcher=slurm_ddp every process of a job runs the sweep job: all of them train,
    but only rank 0 counts the attempt and records a failure (one error.txt, one record)."""
    from segbench.app import sweep as sweep_module

    trained_as = []

    def fail(cfg, hydra_cfg):
        trained_as.append(os.environ.get("RANK"))
        raise RuntimeError("simulated failure on this rank")

    monkeypatch.setattr(sweep_module, "train_job", fail)
    other, first = tmp_path / "rank1", tmp_path / "rank0"
    one_job(cli_in_process, synthetic_root, other, env={"RANK": "1"})
    assert trained_as == ["1"] and not [p for p in other.iterdir() if p.is_dir() and any(p.iterdir())]
    out = one_job(cli_in_process, synthetic_root, first, env={"RANK": "0"})
    assert out.returncode == 1 and trained_as == ["1", "0"]
    record = RunRecord.load(the_job(first))
    assert record.sweep.attempts == 1 and "simulated failure" in record.error
    assert (the_job(first) / "error.txt").is_file()
