"""`segbench data check` as users run it: its output and its exit status (a failed check through a
real interpreter, as a script would see it; the passing one in this process, `cli_in_process`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures import datasets as fx

REPO = Path(__file__).resolve().parents[2]


def segbench(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGBENCH_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "segbench", *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)


def test_check_on_a_correct_tree_prints_counts_and_exits_0(tmp_path, cli_in_process):
    root = fx.make_voc_aug_sbd(tmp_path / "voc")
    proc = cli_in_process("data", "check", "data=voc_aug", f"data.root={root}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:3] == ["train", "6", "10582"] for line in lines), proc.stdout
    assert any(line.split()[:3] == ["val", "2", "1449"] for line in lines), proc.stdout
    assert "OK: 8 samples checked" in proc.stdout


def test_check_names_a_missing_label_and_a_corrupt_png_and_fails(tmp_path):
    root = fx.make_camvid(tmp_path)
    missing = root / "trainannot" / f"{fx.CAMVID_SPLITS['train'][1]}.png"
    missing.unlink()
    corrupt = root / "testannot" / f"{fx.CAMVID_SPLITS['test'][0]}.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # truncated mid-stream
    proc = segbench("data", "check", "data=camvid", f"data.root={root}", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "missing label: 1" in proc.stdout and str(missing) in proc.stdout
    assert "unreadable: 1" in proc.stdout and str(corrupt) in proc.stdout
    assert "FAILED: 2 problem(s)" in proc.stdout
