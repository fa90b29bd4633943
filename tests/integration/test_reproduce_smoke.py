"""`make reproduce-smoke` / `make reproduce`: scripts/reproduce.py end to end on fixture data."""
import json
import os
import subprocess
import sys

import pytest

from segbench.record import RunRecord
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / "scripts" / "reproduce.py"


def reproduce(*args, env=None, timeout=600):
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_pipeline_writes_a_labelled_report(tmp_path):
    """The smallest smoke: three recipes (SegNet + BF, DeepLab-LargeFOV + CRF, U-Net on ISBI)."""
    chosen = ["segnet_vgg16_camvid", "deeplabv1_vgg16_voc_aug_crf", "unet_isbi"]
    out = reproduce("--smoke", "--out", str(tmp_path), "--experiments", ",".join(chosen))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    assert "SMOKE RUN" in report and (tmp_path / "REPORT.png").is_file()
    lines = report.splitlines()
    for name in chosen:  # the measured column is the job's own run.json number, in the paper's unit
        at = next(i for i, l in enumerate(lines) if l.startswith(f"| {name} (smoke) |"))
        run = lines[at].split("|")[13].strip()
        scores = RunRecord.load(tmp_path / "runs" / run).training.validation.scores
        checked = []
        end = at + 1
        while lines[end].startswith("| ↳ same result |"):
            end += 1
        for line in lines[at:end]:
            row = line.split("|")  # the headline row, then the paper's other metrics of the same result
            metric, measured = row[2].strip(), row[7].strip()
            if metric.startswith(("warping_error", "rand_error", "pixel_error")):  # U-Net: the ISBI errors
                key = metric.split()[0]
                expected = f"{scores[key]:.{7 if key == 'warping_error' else 4}f}"
            else:
                expected = f"{100 * scores[metric]:.2f}"
            assert measured == f"{expected} (smoke)", row
            checked.append((metric, row[3].strip()))
        if name == "segnet_vgg16_camvid":  # SegNet's boundary F1 is measured too
            assert ("BF", "46.84") in checked, checked
    assert "SS +CRF" in report
    assert "| fcn8s_vgg16_voc | mIoU | 62.70 |" in report and "not run" in report  # not chosen: listed, no number
    assert json.loads((tmp_path / "skipped.json").read_text()) == {}
    assert len(json.loads((tmp_path / "runs" / "summary.json").read_text())["rows"]) == 3
    jobs = sorted((tmp_path / "runs").glob("experiment=*"))
    assert len(jobs) == 3 and all(RunRecord.load(job).config["smoke"] is True for job in jobs)  # as trained


def test_reproduce_runs_what_has_data_and_lists_the_rest(tmp_path):
    from tests.fixtures.datasets import make_dataset

    data = tmp_path / "data"
    make_dataset("camvid", data)
    out = reproduce("--dry-run", "--out", str(tmp_path / "out"), "--experiments",
                    "segnet_vgg16_camvid,unet_isbi,pspnet_r101_cityscapes", env={"SEGBENCH_DATA": str(data)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "runnable (1): segnet_vgg16_camvid" in out.stdout
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert set(skipped) == {"unet_isbi", "pspnet_r101_cityscapes"}
    assert str(data / "isbi") in skipped["unet_isbi"] and str(data / "cityscapes") in skipped["pspnet_r101_cityscapes"]


def test_make_targets_call_the_script():
    out = subprocess.run(["make", "-n", "--no-print-directory", "reproduce", "reproduce-smoke"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "scripts/reproduce.py --out runs/reproduce" in out.stdout
    assert "scripts/reproduce.py --smoke --out runs/reproduce-smoke" in out.stdout
