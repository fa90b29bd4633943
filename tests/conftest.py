"""Shared fixtures: a tiny synthetic dataset, composed configs, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import segbench.app  # noqa: F401 - registers the config schemas and resolvers the compose below needs

REPO = Path(__file__).resolve().parents[1]

# Keep every test on the two cores without oversubscription and off the network.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite runs as if on an AVX2-only CPU (fp32 defaults) whatever this CPU is, so results
# compared across code paths do not depend on the machine; tests of the bf16-native branch
# force it with the `cpu_bf16` fixture. SEGBENCH_CPU_BF16=1 make test runs it the other way.
os.environ.setdefault("SEGBENCH_CPU_BF16", "0")

# Tests that start several processes and stop them with signals (torchrun ranks, DataLoader
# workers, a process group under `timeout`): under `make test`'s pytest-xdist they share one
# worker, so two of them never compete for the 2 cores while a launcher's grace period runs.
SIGNALLED_PROCESSES = ("tests/integration/test_distributed.py", "tests/integration/test_signals.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SIGNALLED_PROCESSES):
            item.add_marker(pytest.mark.xdist_group("signalled_processes"))


TINY_SYNTHETIC = [
    "data.dataset.num_train=32",
    "data.dataset.num_val=8",
    "data.dataset.image_size=32",
    "data.transforms.train.crop_size=[32,32]",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "model.base_channels=4",
    "trainer.progress=false",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic set (32 train / 8 val, 32x32), generated once per session."""
    from segbench.data.synthetic import SyntheticShapes

    root = tmp_path_factory.mktemp("data") / "synthetic"
    SyntheticShapes(root, "train", num_train=32, num_val=8, image_size=32)
    return root


def compose(config_name: str, overrides=(), hydra_cfg: bool = False):
    """The config ``segbench <verb> <overrides>`` runs with (``config_name``: the verb's file), for
    every test; ``hydra_cfg=True`` keeps Hydra's part, to run a verb in-process under HydraConfig."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="segbench.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_cfg)


def compose_train(overrides: list[str]):
    """The config `segbench train <overrides>` would run (hydra keys left out)."""
    return compose("train", overrides)


@pytest.fixture
def tiny_cfg(synthetic_root, tmp_path):
    def make(*extra: str):
        cfg = compose_train([*TINY_SYNTHETIC, f"data.root={synthetic_root}", *extra])
        return cfg

    return make


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `python -m segbench <args>` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "segbench", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    """CLI runner whose runs land in tmp_path/runs."""
    def call(*args: str, **kw):
        env = {"SEGBENCH_RUNS": str(tmp_path / "runs"), **kw.pop("env", {})}
        return run_cli(*args, env=env, **kw)

    return call


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module of paper-width networks on tiny inputs: a second
    thread gains little there, and on a shared 2-core machine OpenMP's spin-waiting makes them
    many times slower (measured under load: DeepLab v3+ Xception-65, one forward + backward on
    2x3x32x32, median of 3 alternated rounds, 2.1 s with one thread vs 42.8 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli_in_process(tmp_path, monkeypatch, capsys):
    """The `cli` fixture without a new interpreter: ``segbench.cli.main(args)`` in this process,
    returned as a CompletedProcess (exit status, stdout, stderr). A subprocess costs seconds of
    torch and Hydra imports per call; use `cli` only where the process itself is the point (the
    interpreter's exit status, signals, an installed copy of the package).

    Each call starts as a fresh process would: Hydra's global state cleared, sys.argv and the
    environment (main sets HYDRA_FULL_ERROR) restored afterwards, the
    CLI's record of the directories it created emptied; runs land in tmp_path/runs, the working
    directory is tmp_path. A bug (any exception but SystemExit) propagates with its traceback."""
    from segbench import cli as segbench_cli
    from segbench.app import outputs

    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        saved_env, saved_argv = dict(os.environ), sys.argv
        os.environ.update(env or {})
        outputs._NEW_DIRS.clear()
        GlobalHydra.instance().clear()
        capsys.readouterr()  # what the test printed before is not this command's output
        code = 0
        try:
            segbench_cli.main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)
            GlobalHydra.instance().clear()
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["segbench", *args], code, out.out, out.err)

    return call


@pytest.fixture(params=[False, True], ids=["avx2", "bf16-native"])
def cpu_bf16(request, monkeypatch):
    """Run a test once as on an AVX2-only CPU and once as on an AVX512-BF16/AMX CPU."""
    monkeypatch.setenv("SEGBENCH_CPU_BF16", "1" if request.param else "0")
    return request.param
