"""DDP on CPU (gloo, 2 processes): same metrics as one process, same weights on every rank, a
checkpoint single-process eval loads; a signal to the whole job and a failure on one rank stop
both ranks together; SyncBN (GPU) and its CPU fallback; the SLURM launcher config.

The two-process runs start this very file under ``torch.distributed.run`` (see ``worker`` and
``cli_worker``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from segbench.data.normalization import Normalization  # noqa: E402
from segbench.engine import build, distributed  # noqa: E402
from segbench.engine.device import resolve_precision
from segbench.engine.distributed import ShardSampler, World  # noqa: E402
from tests.conftest import TINY_SYNTHETIC, compose, compose_train  # noqa: E402

NUM_VAL = 7  # odd: the two shards differ in size (4 and 3 images), nothing may be padded
_MINE = {"data.dataset.num_val": str(NUM_VAL), "data.val_batch_size": "2", "trainer.max_iters": "4",
         "trainer.val_interval": "4", "trainer.log_interval": "2"}
DDP_OVERRIDES = [o for o in TINY_SYNTHETIC if o.split("=")[0] not in _MINE] + [f"{k}={v}" for k, v in _MINE.items()]


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    from segbench.data.synthetic import SyntheticShapes

    root = tmp_path_factory.mktemp("ddp") / "synthetic"
    SyntheticShapes(root, "train", num_train=32, num_val=NUM_VAL, image_size=32)
    return root


def torchrun(*args: str, processes: int = 2, timeout: int = 300, runs: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` in its own session: a signal to the process group reaches torchrun,
    its ranks and their DataLoader workers, as SLURM or ``timeout`` deliver it. ``runs``: SEGBENCH_RUNS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if runs is not None:
        env["SEGBENCH_RUNS"] = str(runs)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)


# ---- what each of the two processes runs --------------------------------------------------------------
def worker(data_root: str, out: str) -> None:
    """Train a few iterations with the Trainer under DDP; dump this rank's weights, its
    validation record and the confusion matrix validation summed."""
    from segbench.engine import trainer as trainer_module

    matrices = []
    evaluate = trainer_module.evaluate

    def keep_matrix(*args, **kwargs):
        matrix = evaluate(*args, **kwargs)
        matrices.append(matrix.matrix.clone())
        return matrix

    trainer_module.evaluate = keep_matrix
    cfg = compose_train([*DDP_OVERRIDES, f"data.root={data_root}"])
    trainer = trainer_module.Trainer(cfg, Path(out) / "run")
    assert trainer.world.size == 2
    rank = trainer.world.rank
    validation = trainer.fit()
    torch.save({"state": trainer.model.state_dict(), "matrix": matrices[-1]}, Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(validation.scores))


def cli_worker(scenario: str, out: str, *args: str) -> None:
    """``segbench train <args>`` on this rank, as torchrun runs it, with ``scenario`` at step k:
    ``sigterm@k`` rank 0 signals the whole process group; ``nan@k`` rank 1's loss turns NaN;
    ``diskfull@k`` rank 0's checkpoint write fails. Writes ``exit<rank>``: status and time."""
    from segbench.cli import main
    from segbench.engine import trainer as trainer_module

    kind, _, at = scenario.partition("@")
    rank, k = int(os.environ["RANK"]), int(at or 0)
    step, save_checkpoint = trainer_module.Trainer.step, trainer_module.save_checkpoint

    def scripted_step(self, batch):
        if self.iteration + 1 == k and kind == "sigterm" and rank == 0:
            # arrives during step k, from another process (as from slurmstepd, timeout: see test_signals)
            subprocess.run(["kill", "-s", "TERM", "--", f"-{os.getpgid(0)}"])
        if self.iteration + 1 == k and kind == "nan" and rank == 1:
            criterion = self.criterion
            self.criterion = lambda *a: criterion(*a) * float("nan")  # NaN loss and gradients
            try:
                return step(self, batch)
            finally:
                self.criterion = criterion
        return step(self, batch)

    def scripted_save(path, state):
        if kind == "diskfull" and state["iteration"] >= k:
            raise OSError(28, "No space left on device")
        save_checkpoint(path, state)

    trainer_module.Trainer.step, trainer_module.save_checkpoint = scripted_step, scripted_save
    status = 0
    try:
        main(["train", *args])
    except SystemExit as end:
        status = end.code
    Path(out, f"exit{rank}").write_text(f"{status} {time.time()}")
    sys.exit(status)


def ended(out: Path) -> list[tuple[int, float]]:
    """Each rank's (exit status, time) as cli_worker wrote them."""
    return [(int(text.split()[0]), float(text.split()[1]))
            for text in ((out / f"exit{r}").read_text() for r in (0, 1))]


# ---- the tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_run(ddp_data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 2-process training (``worker``): its folder and torchrun's result."""
    out = tmp_path_factory.mktemp("ddp_run")
    return out, torchrun(__file__, "--worker", str(ddp_data), str(out))


@pytest.mark.slow
def test_two_process_training_matches_single_process_eval(two_process_run):
    tmp_path, proc = two_process_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "keeps per-process BatchNorm" in proc.stdout and proc.stdout.count("keeps per-process BatchNorm") == 1

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # Identical weights and BN statistics on both ranks.
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert torch.equal(ranks[0]["matrix"], ranks[1]["matrix"])  # the summed matrix, on both ranks

    # Rank 0 alone wrote: one TensorBoard file, one checkpoint, metrics.
    run = tmp_path / "run"
    from segbench.record import RunRecord

    assert (run / "last.pt").is_file() and [p.name for p in run.glob("*.json")] == ["run.json"]
    assert len(list((run / "tb").glob("events.*"))) == 1
    record = RunRecord.load(run)
    assert record.training.summary.world_size == 2 and record.iteration == 4 and record.status == "finished"

    # Single-process evaluation of the checkpoint: the same confusion matrix, the same scores.
    from segbench.engine.checkpoint import load_checkpoint, load_model_weights
    from segbench.engine.evaluator import evaluate
    from omegaconf import OmegaConf

    state = load_checkpoint(run / "last.pt")
    cfg = OmegaConf.create(state["config"])
    model = build.build_model(cfg)
    load_model_weights(model, state, run / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, ranks[0]["state"][key]), key
    dataset = build.build_dataset(cfg, cfg.data.val_split, train=False)
    cpu = torch.device("cpu")  # in the precision training validated in (bf16 where the CPU has it)
    matrix = evaluate(model, build.build_eval_loader(cfg, dataset), dataset.num_classes, cpu,
                      precision=resolve_precision(cpu, str(cfg.trainer.precision)), progress=False,
                      normalization=Normalization.from_data_config(cfg.data))
    assert torch.equal(matrix.matrix, ranks[0]["matrix"])
    # ... which counts every labelled val pixel exactly once (no padded / repeated images).
    labelled = sum(int((dataset[i]["label"] != 255).sum()) for i in range(len(dataset)))
    assert len(dataset) == NUM_VAL and int(matrix.matrix.sum()) == labelled
    single = matrix.compute()
    for r in (0, 1):
        record = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert record["mIoU"] == pytest.approx(single["mIoU"], abs=0, nan_ok=True)
        assert record["aAcc"] == single["aAcc"]


@pytest.mark.slow
def test_sigterm_to_the_job_stops_both_ranks_and_the_resume_is_bit_exact(two_process_run, ddp_data, tmp_path):
    """SIGTERM to torchrun's whole process group (ranks, their DataLoader workers, torchrun itself,
    which passes it on once more) in the middle of step 3: both ranks stop after that step, rank 0
    writes last.pt at 3, run.json says interrupted; the resume ends where the run that was never
    stopped ended, bit for bit."""
    run = tmp_path / "run"
    args = [*DDP_OVERRIDES, f"data.root={ddp_data}", "data.num_workers=1", f"run_dir={run}"]
    proc = torchrun(__file__, "--cli", "sigterm@3", str(tmp_path), *args, runs=tmp_path / "runs")
    assert [status for status, _ in ended(tmp_path)] == [143, 143], proc.stderr[-4000:]
    assert "killed by signal" not in proc.stderr and "SIGTERM: stopped at iteration 3/4" in proc.stderr
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.record import RunRecord

    assert load_checkpoint(run / "last.pt")["iteration"] == 3 and RunRecord.load(run).status == "interrupted"

    resumed = torchrun(__file__, "--cli", "none", str(tmp_path), *args[:-1], f"trainer.resume={run}",
                       runs=tmp_path / "runs")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert RunRecord.load(run).status == "finished"
    final = load_checkpoint(run / "last.pt")["model"]
    straight = torch.load(two_process_run[0] / "rank0.pt")["state"]
    for key, value in straight.items():
        assert torch.equal(value, final[key]), f"{key} differs after a SIGTERM to the job + resume"


@pytest.mark.slow
@pytest.mark.parametrize("scenario,message", [
    ("nan@2", "loss became nan at iteration 2"),  # rank 1's loss; the report is over both ranks
    ("diskfull@3", "rank 0 of 2: cannot write checkpoint"),  # rank 0's write, agreed at the next step
])
def test_a_failure_on_one_rank_ends_both_with_the_same_message(scenario, message, ddp_data, tmp_path):
    run = tmp_path / "run"
    args = [*DDP_OVERRIDES, f"data.root={ddp_data}", "data.num_workers=1", "trainer.checkpoint_interval=1",
            "trainer.checkpoint_minutes=null", f"run_dir={run}"]
    proc = torchrun(__file__, "--cli", scenario, str(tmp_path), *args, timeout=120, runs=tmp_path / "runs")
    (status0, time0), (status1, time1) = ended(tmp_path)
    assert status0 == status1 == 2 and abs(time0 - time1) < 5, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if "segbench train: error:" in line]
    assert len(lines) == 2 and lines[0] == lines[1] and message in lines[0], proc.stderr[-4000:]
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.record import RunRecord

    k = int(scenario.split("@")[1])
    assert load_checkpoint(run / "last.pt")["iteration"] == k - 1  # the last good one, intact
    assert RunRecord.load(run).status == "failed"


@pytest.mark.slow
def test_devices_launches_torchrun_into_one_run_dir(cli, ddp_data, tmp_path):
    run_dir = tmp_path / "runs" / "ddp"
    proc = cli("train", *DDP_OVERRIDES, f"data.root={ddp_data}", "trainer.devices=2", f"run_dir={run_dir}",
               env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "launching 2 processes" in proc.stdout
    from segbench.record import RunRecord

    summary = RunRecord.load(run_dir).training.summary
    assert summary.world_size == 2 and summary.global_batch == 4
    assert (run_dir / "last.pt").is_file()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # nothing written elsewhere


@pytest.mark.slow
def test_devices_launcher_passes_a_signal_to_the_job_on_once(ddp_data, tmp_path):
    """`segbench train trainer.devices=2` under `timeout` / sbatch / a terminal: the signal reaches
    the launching process, which waits for torchrun (in its own session) and passes it on once;
    both ranks stop, rank 0 writes last.pt, and the launcher exits 143 after them."""
    import signal

    run = tmp_path / "run"
    args = [*DDP_OVERRIDES, f"data.root={ddp_data}", "trainer.devices=2", "trainer.max_iters=100000",
            "trainer.val_interval=100000", "trainer.checkpoint_interval=1", "trainer.checkpoint_minutes=null",
            f"run_dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SEGBENCH_RUNS": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-m", "segbench", "train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # training is under way
        os.killpg(proc.pid, signal.SIGTERM)  # the launcher's whole group, as timeout or a terminal does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-4000:]
    assert "SIGTERM: stopped at iteration" in stderr and "processes failed" not in stderr
    from segbench.engine.checkpoint import load_checkpoint
    from segbench.record import RunRecord

    assert load_checkpoint(run / "last.pt")["iteration"] >= 1 and RunRecord.load(run).status == "interrupted"


# ---- single-process pieces --------------------------------------------------------------------------
def test_shard_sampler_partitions_without_padding():
    for size in (7, 8, 1, 0):
        shards = [list(ShardSampler(size, r, 3)) for r in range(3)]
        assert sorted(i for s in shards for i in s) == list(range(size))
        assert [len(ShardSampler(size, r, 3)) for r in range(3)] == [len(s) for s in shards]


def small_bn_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    frozen = nn.BatchNorm2d(4)
    frozen.requires_grad_(False)  # as DeepLab v2's frozen BN
    net.append(frozen)
    return net


def test_sync_bn_cpu_keeps_batchnorm_and_says_so():
    cpu, two = torch.device("cpu"), World(rank=0, size=2)
    for setting in ("auto", True):
        net, note = distributed.maybe_sync_batchnorm(small_bn_net(), setting, cpu, two)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
        assert "keeps per-process BatchNorm" in note
    assert distributed.maybe_sync_batchnorm(small_bn_net(), False, cpu, two)[1] is None
    assert distributed.maybe_sync_batchnorm(small_bn_net(), "auto", cpu, World())[1] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA")
def test_sync_bn_converts_on_cuda():
    cuda, two = torch.device("cuda"), World(rank=0, size=2)
    net, note = distributed.maybe_sync_batchnorm(small_bn_net(), "auto", cuda, two)
    assert note is None
    kinds = [type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [nn.SyncBatchNorm, nn.SyncBatchNorm, nn.BatchNorm2d]  # the frozen one stays
    net.cuda().eval()(torch.randn(2, 3, 8, 8, device=cuda))  # eval mode needs no process group
    single, _ = distributed.maybe_sync_batchnorm(small_bn_net(), "auto", cuda, World())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in single.modules())


def test_devices_setting_is_checked(monkeypatch):
    assert distributed.requested_processes(1, "cpu") == 1
    assert distributed.requested_processes("auto", "cpu") == 1
    assert distributed.requested_processes(4, "cpu") == 4  # N gloo processes on one CPU machine
    with pytest.raises(Exception, match="positive integer"):
        distributed.requested_processes("two", "cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    distributed.check_launch_matches(2, "cpu")
    distributed.check_launch_matches(1, "cpu")  # the default: the launcher decides
    with pytest.raises(Exception, match="the launcher started 2 processes"):
        distributed.check_launch_matches(4, "cpu")


def test_slurm_environment_is_exported(monkeypatch):
    """Under a submitit SLURM job of 4 tasks (2 nodes), torch.distributed's variables appear."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert distributed.launched()
    distributed._export_slurm_environment()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("4", "3", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["LOCAL_WORLD_SIZE"] == "2"
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)  # monkeypatch only restores what it set


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm", "slurm_ddp"])
def test_submitit_launcher_config_composes(launcher):
    """`segbench train|sweep hydra/launcher=... --cfg hydra` composes; segbench's own launchers ask
    SLURM for the pre-timeout signal early enough to finish a step and write last.pt."""
    for name in ("train", "sweep"):
        cfg = compose(name, [f"hydra/launcher={launcher}"], hydra_cfg=True)
        assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        if launcher == "slurm_ddp":
            assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node
        if launcher != "submitit_slurm":
            assert cfg.hydra.launcher.signal_delay_s >= 120 and cfg.hydra.launcher.max_num_timeout >= 1


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(*sys.argv[2:4])
if __name__ == "__main__" and sys.argv[1:2] == ["--cli"]:
    cli_worker(*sys.argv[2:])
