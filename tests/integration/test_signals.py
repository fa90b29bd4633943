"""A kill loses at most one interval: interval checkpoints, SIGINT/SIGTERM/SIGUSR1 -> last.pt at
that iteration + the resume command, and a resume that ends bit-identical to an uninterrupted run.

The signal is real (delivered to a `segbench train` subprocess by the kernel); the subprocess
sends it to itself from inside step k, so "a random iteration between checkpoints" is exact and
the test does not race the clock. A cluster (SLURM, `timeout`, systemd, Ctrl-C) signals the whole
process group, DataLoader workers included: the group tests start the run in its own session
with workers and signal the group.
"""
from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.trainer import Trainer
from tests.conftest import REPO, TINY_SYNTHETIC

pytestmark = pytest.mark.slow

COMMON = ["trainer.max_iters=8", "trainer.val_interval=8", "trainer.checkpoint_interval=3",
          "trainer.checkpoint_minutes=null", "trainer.seed=5", "trainer.log_interval=1"]

# Runs `segbench train` in this process after patching Trainer.step to signal itself once.
KILL_AT = """
import os, signal, subprocess, sys
from segbench.engine import trainer
k, sig, group = int(sys.argv[1]), getattr(signal, sys.argv[2].split(":")[0]), sys.argv[2].endswith(":group")
step = trainer.Trainer.step
def step_and_signal(self, batch):
    if self.iteration + 1 == k:  # arrives during step k: the step completes, then the stop
        if group:  # sent by another process, as slurmstepd or timeout send it (a DataLoader worker
            # quietly exits on a SIGTERM from its own parent, so the parent must not be the sender)
            subprocess.run(["kill", "-s", sig.name[3:], "--", f"-{os.getpgid(0)}"])
        else:
            os.kill(os.getpid(), sig)
    return step(self, batch)
trainer.Trainer.step = step_and_signal
from segbench.cli import main
main(["train", *sys.argv[3:]])
"""


def printed_resume_command(stderr: str) -> list[str]:
    """The `resume with: segbench train ...` line, as a command this interpreter runs."""
    command = shlex.split(re.search(r"resume with: (segbench train .*)", stderr).group(1))
    return [sys.executable, "-m", *command]


@pytest.fixture(scope="module")
def straight(synthetic_root, tmp_path_factory):
    """The uninterrupted run's final weights."""
    from tests.conftest import compose_train

    run = tmp_path_factory.mktemp("straight")
    trainer = Trainer(compose_train([*TINY_SYNTHETIC, f"data.root={synthetic_root}", *COMMON]), run)
    trainer.fit()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("name,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_checkpoints_that_iteration_and_resume_is_bit_exact(name, status, straight, synthetic_root, tmp_path):
    k = random.Random(name).choice([4, 5])  # between the interval checkpoints at 3 and 6
    run = tmp_path / "run"
    args = [*TINY_SYNTHETIC, f"data.root={synthetic_root}", *COMMON, f"run_dir={run}"]
    env = {**os.environ, "SEGBENCH_RUNS": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-c", KILL_AT, str(k), name, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == status, out.stderr[-2000:]
    assert "Traceback" not in out.stderr + out.stdout
    assert f"{name}: stopped at iteration {k}/8" in out.stderr
    assert "resume with: segbench train" in out.stderr and f"trainer.resume={run}" in out.stderr
    assert load_checkpoint(run / "last.pt")["iteration"] == k
    from segbench.record import RunRecord

    stopped = RunRecord.load(run)
    assert (stopped.status, stopped.iteration, stopped.max_iters, stopped.error) == ("interrupted", k, 8, "")

    from tests.conftest import compose_train

    resumed = Trainer(compose_train([*TINY_SYNTHETIC, f"data.root={synthetic_root}", *COMMON,
                                     "trainer.resume=true"]), run)
    assert resumed.iteration == k
    resumed.fit()
    assert RunRecord.load(run).status == "finished"
    final = resumed.model.state_dict()
    for key, value in straight.items():
        assert torch.equal(value, final[key]), f"{key} differs after {name} + resume"


@pytest.mark.parametrize("name,status", [("SIGUSR1", 138)])  # SIGUSR2 (submitit's) takes the same path
def test_slurm_warning_checkpoints_then_hands_over_to_submitit(name, status, tiny_cfg, tmp_path, monkeypatch):
    """SLURM's pre-timeout signal (submitit asks for SIGUSR2): last.pt at that step first, then the
    handler that was installed before training (submitit's requeue) runs, then exit 128 + signal."""
    from segbench.errors import Interrupted

    sig = getattr(signal, name)
    calls = []
    def submitit(signum, frame):  # stands in for submitit's checkpoint-and-requeue handler
        calls.append(load_checkpoint(run / "last.pt")["iteration"])

    previous = signal.signal(sig, submitit)
    run = tmp_path / "run"
    real_step = Trainer.step

    def step_and_signal(self, batch):
        if self.iteration + 1 == 2:
            os.kill(os.getpid(), sig)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step", step_and_signal)
    try:
        with pytest.raises(Interrupted) as stopped:
            Trainer(tiny_cfg("trainer.max_iters=5", "trainer.val_interval=5"), run).fit()
        assert signal.getsignal(sig) is submitit  # restored after training
    finally:
        signal.signal(sig, previous)
    assert stopped.value.exit_status == status and calls == [2]
    assert "stopped at iteration 2/5" in str(stopped.value) and f"trainer.resume={run.resolve()}" in str(stopped.value)


def test_sigterm_to_the_whole_process_group_with_workers(straight, synthetic_root, tmp_path):
    """SLURM / timeout / systemd signal every process of the job: the DataLoader workers ignore it,
    the main process writes last.pt at that iteration and shuts them down, and the printed resume
    command ends bit-identical to a run never stopped."""
    k, run = 4, tmp_path / "run"
    args = [*TINY_SYNTHETIC, f"data.root={synthetic_root}", *COMMON, "data.num_workers=2", f"run_dir={run}"]
    env = {**os.environ, "SEGBENCH_RUNS": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-c", KILL_AT, str(k), "SIGTERM:group", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300, start_new_session=True)
    assert out.returncode == 143, out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout and "killed by signal" not in out.stderr
    assert f"SIGTERM: stopped at iteration {k}/8" in out.stderr
    assert load_checkpoint(run / "last.pt")["iteration"] == k
    from segbench.record import RunRecord

    assert RunRecord.load(run).status == "interrupted"
    resumed = subprocess.run(printed_resume_command(out.stderr), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunRecord.load(run).status == "finished"
    final = load_checkpoint(run / "last.pt")
    assert final["iteration"] == 8
    for key, value in straight.items():
        assert torch.equal(value, final["model"][key]), f"{key} differs after a group SIGTERM + resume"


def test_timeout_signalling_the_group_leaves_last_pt_and_resumes(synthetic_root, tmp_path):
    """`timeout -s TERM <s> segbench train ...`: when the time is up, timeout sends SIGTERM to its
    whole process group. timeout does exactly that on expiry and when it receives SIGTERM itself,
    so the test sends SIGTERM to timeout once training is under way (no race with start-up time)."""
    run = tmp_path / "run"
    args = [*TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=100000", "trainer.val_interval=100000",
            "trainer.checkpoint_interval=2", "trainer.checkpoint_minutes=null", "data.num_workers=2", f"run_dir={run}"]
    env = {**os.environ, "SEGBENCH_RUNS": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(["timeout", "-s", "TERM", "600", sys.executable, "-m", "segbench", "train", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # the first interval checkpoint: training is under way
        proc.send_signal(signal.SIGTERM)  # timeout passes it to the group, as when its time is up
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]  # timeout exits with the command's status
    assert "Traceback" not in stderr and "SIGTERM: stopped at iteration" in stderr
    stopped_at = load_checkpoint(run / "last.pt")["iteration"]
    assert stopped_at >= 2 and f"stopped at iteration {stopped_at}/100000" in stderr
    command = printed_resume_command(stderr) + ["trainer.max_iters=" + str(stopped_at + 2)]
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["iteration"] == stopped_at + 2


def test_interval_and_time_checkpoints_are_independent_of_validation(tiny_cfg, tmp_path, monkeypatch):
    saved = []
    real_save = Trainer.save

    def spy(self, name, **options):
        saved.append((name, self.iteration))
        real_save(self, name, **options)

    monkeypatch.setattr(Trainer, "save", spy)
    Trainer(tiny_cfg("trainer.max_iters=7", "trainer.val_interval=7", "trainer.checkpoint_interval=3",
                     "trainer.checkpoint_minutes=null"), tmp_path / "a").fit()
    assert [it for name, it in saved if name == "last.pt"] == [3, 6, 7]

    saved.clear()  # by wall time only: a 0.000001-minute budget expires every step
    Trainer(tiny_cfg("trainer.max_iters=3", "trainer.val_interval=3", "trainer.checkpoint_interval=null",
                     "trainer.checkpoint_minutes=0.000001"), tmp_path / "b").fit()
    assert [it for name, it in saved if name == "last.pt"] == [1, 2, 3]


def _snapshot(run) -> dict:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def test_resume_from_anywhere_extends_records_and_a_finished_run_stays_untouched(synthetic_root, tmp_path, monkeypatch):
    """trainer.resume=<run dir> trains into that dir from any cwd (Hydra's new dir is removed);
    a longer trainer.max_iters re-plans the poly LR (not lr 0 past the old end) and is recorded in
    run.json; resuming the finished run again changes no byte on disk (.hydra/ included);
    trainer.overwrite=true starts the run over."""
    from segbench import cli
    from segbench.record import RunRecord

    run = tmp_path / "run"
    args = [*TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.val_interval=2", "trainer.log_interval=1"]
    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path / "runs"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli.main(["train", *args, "trainer.max_iters=2", f"run_dir={run}"])
    hydra_record = (run / ".hydra" / "overrides.yaml").read_text()

    seen_lr = []
    real_step = Trainer.step

    def spy(self, batch):
        seen_lr.append(self.optimizer.param_groups[0]["lr"])
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "step", spy)
    cli.main(["train", *args, "trainer.max_iters=4", f"trainer.resume={run}"])
    assert not (tmp_path / "runs").exists() and list(elsewhere.iterdir()) == []
    assert load_checkpoint(run / "last.pt")["iteration"] == 4
    assert seen_lr[0] > 0 and seen_lr[0] == pytest.approx(seen_lr[1] / (1 - 3 / 4) ** 0.9 * (1 - 2 / 4) ** 0.9)
    record = RunRecord.load(run)
    (resume,) = record.training.resumes
    assert resume["iteration"] == 2 and resume["changed"] == {"trainer.max_iters": [2, 4]}
    assert (record.status, record.iteration, record.max_iters) == ("finished", 4, 4)
    assert record.config["trainer"]["max_iters"] == 4
    assert (run / ".hydra" / "overrides.yaml").read_text() == hydra_record  # how the run began

    before = _snapshot(run)
    cli.main(["train", *args, "trainer.max_iters=4", f"trainer.resume={run}"])
    assert _snapshot(run) == before, "resuming a finished run must not touch it"

    cli.main(["train", *args, "trainer.max_iters=2", f"run_dir={run}", "trainer.overwrite=true"])
    assert load_checkpoint(run / "last.pt")["iteration"] == 2 and RunRecord.load(run).training.resumes == []
