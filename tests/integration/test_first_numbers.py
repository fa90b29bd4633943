"""The first paper numbers' two halves on CPU: CamVid through segbench.parts (packed, carried in
parts, assembled, checked), and scripts/first_numbers.py's dry run through the parts to its rows."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segbench import parts
from segbench.errors import SegbenchError
from segbench.record import RunRecord
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "first_numbers.py"
CAMVID = REPO.parent / "shared" / "data" / "camvid"
FIELDS = {"experiment", "metrics", "split", "iterations", "planned_iterations", "recipe_complete", "wall_s", "device",
          "precision", "commands", "curve", "plan", "status"}


def run(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def tree(root: Path) -> Path:
    for k in range(6):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "sub" / f"{k}.bin").write_bytes(hashlib.sha256(bytes([k])).digest() * 300)
    return root


def test_parts_cli_refuses_with_one_line_and_status_2_without_hydra(tmp_path):
    """The device machine runs this before Hydra is installed: the module must not import it."""
    parts.pack(tree(tmp_path / "demo"), tmp_path / "out", max_bytes=20 * 2**10)
    blocker = ("import sys\nclass B:\n    def find_spec(self, name, *a):\n"
               "        if name.split('.')[0] in ('hydra', 'omegaconf', 'albumentations'): raise ImportError(name)\n"
               "sys.meta_path.insert(0, B())\nimport runpy\nsys.argv = ['parts'] + sys.argv[1:]\n"
               "runpy.run_module('segbench.parts', run_name='__main__')\n")
    ok = run("-c", blocker, "receive", tmp_path / "out" / "demo", "--store", tmp_path / "store")
    assert ok.returncode == 0 and "complete" in ok.stdout, ok.stderr
    sorted((tmp_path / "store" / "demo").glob("*.tar"))[1].unlink()  # the store lost part 2 (a fresh machine)
    bad = run("-c", blocker, "assemble", f"demo={tmp_path / 'data' / 'demo'}", "--store", tmp_path / "store")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "incomplete set" in bad.stderr, bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid")
def test_camvid_in_parts_of_at_most_60_mib_rebuilds_the_release(tmp_path):
    """182 MiB of CamVid -> parts <= 60 MiB -> the same tree: the release's checksums and data check."""
    manifest = parts.read_manifest(parts.pack(CAMVID, tmp_path / "packed"))
    sizes = [p.stat().st_size for p in (tmp_path / "packed" / "camvid").glob("*.tar")]
    assert len(sizes) == len(manifest["parts"]) >= 4 and max(sizes) <= 60 * 2**20
    print(parts.receive(tmp_path / "packed" / "camvid", tmp_path / "store"))
    into = parts.assemble("camvid", tmp_path / "store", tmp_path / "data" / "camvid")
    listed = [line.split(None, 1) for line in (into / "camvid.sha256").read_text().splitlines() if line.strip()]
    assert len(listed) > 1400
    for digest, name in listed:
        assert parts.sha256_of(into / name.strip().lstrip("*")) == digest, name
    check = run("-m", "segbench", "data", "check", "data=camvid", f"data.root={into}", "data.num_workers=0")
    assert check.returncode == 0 and "OK: 701 samples checked" in check.stdout, check.stdout[-2000:] + check.stderr
    (tmp_path / "store" / "camvid" / manifest["parts"][2]["file"]).unlink()
    with pytest.raises(SegbenchError, match=r"incomplete set, 1 of \d parts missing \(3\)"):
        parts.assemble("camvid", tmp_path / "store", tmp_path / "data2" / "camvid")


def recipe_paper(name: str) -> dict:
    paper = yaml.safe_load((REPO / "segbench" / "conf" / "experiment" / f"{name}.yaml").read_text())["paper"]
    return {paper["metric"]: paper["value"], **paper.get("also", {})}


@pytest.mark.slow
def test_dry_run_writes_one_row_per_experiment_through_the_parts(tmp_path):
    proc = run(SCRIPT, "--dry-run", "--out", tmp_path, "--budget-s", 600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "complete" in proc.stdout  # the fixtures arrived through segbench.parts
    result = json.loads((tmp_path / "first_numbers.json").read_text())
    assert result["dry_run"] is True and [r["experiment"] for r in result["rows"]] == ["segnet_basic_camvid",
                                                                                        "unet_isbi"]
    for row in result["rows"]:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["recipe_complete"] is True and row["iterations"] == row["planned_iterations"] == 2
        assert row["status"].startswith("done: the full recipe") and row["precision"] == "fp32"
        assert "segbench train experiment=" + row["experiment"] in row["commands"]["train"]
        # the runner polls run.json (every POLL_S): a 2-iteration CPU run may validate twice between two looks
        points = [c["iteration"] for c in row["curve"]]
        assert points[-1] == 2 and points == sorted(set(points)), points
        paper = {m["metric"]: m["paper"] for m in row["metrics"]}
        assert {k: v for k, v in paper.items() if v is not None} == recipe_paper(row["experiment"])
        scored = {m["metric"]: m["measured"] for m in row["metrics"]}
        evaluation = RunRecord.load(tmp_path / "runs" / row["experiment"]).evaluations[-1]
        assert evaluation.split == row["split"] == {"segnet_basic_camvid": "test", "unet_isbi": "val"}[row["experiment"]]
        assert scored["mIoU"] == pytest.approx(100 * evaluation.scores["mIoU"])
    assert json.loads(json.dumps(result))  # well-formed, no NaN
    assert "| segnet_basic_camvid | BF | 35.78 |" in (tmp_path / "first_numbers.md").read_text()


@pytest.mark.slow
def test_a_budget_short_of_the_recipe_stops_with_the_curve_never_the_recipes_number(tmp_path):
    proc = run(SCRIPT, "--dry-run", "--out", tmp_path, "--experiments", "segnet_basic_camvid", "--dry-iters", 100000,
               "--budget-s", 35)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "does NOT fit" in proc.stdout
    row = json.loads((tmp_path / "first_numbers.json").read_text())["rows"][0]
    assert row["recipe_complete"] is False and row["iterations"] < row["planned_iterations"] == 100000
    assert "not the recipe's number" in row["status"]
    assert RunRecord.load(tmp_path / "runs" / "segnet_basic_camvid").status == "interrupted"
    md = (tmp_path / "first_numbers.md").read_text()
    assert "| recipe |" not in md
