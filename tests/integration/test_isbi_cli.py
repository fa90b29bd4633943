"""`segbench train experiment=unet_isbi` and `segbench eval` print the ISBI 2012 challenge's warping /
Rand / pixel errors on the held-out training slices and keep them in run.json (fixture volume:
30 slices of 64 x 64, the zhixuhao/unet PNG layout)."""
import json

import pytest

from segbench.record import RunRecord
from tests.fixtures.datasets import make_isbi_png

pytestmark = pytest.mark.slow
ERRORS = ("warping_error", "rand_error", "pixel_error")


def test_train_and_eval_report_the_isbi_errors_on_the_held_out_slices(cli, tmp_path):
    root = make_isbi_png(tmp_path / "isbi")
    run = tmp_path / "run"
    out = cli("train", "experiment=unet_isbi", f"data.root={root}", "model.base_channels=4",
              "data.transforms.train.crop_size=[20,20]", "trainer.max_iters=1", "trainer.val_interval=1",
              "data.num_workers=0", "trainer.progress=false", f"run_dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ISBI 2012 errors: warping " in out.stdout
    validation = RunRecord.load(run).training.validation
    assert validation.split == "val" and validation.protocol["isbi_errors"] == 0
    assert validation.protocol_name == "SS +ISBI" and all(0 <= validation.scores[k] <= 1 for k in ERRORS)

    out = cli("eval", f"run={run}", "split=val", "progress=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "isbi val (3 images)" in out.stdout  # slices 27-29, held out of training
    (evaluated,) = json.loads((run / "run.json").read_text())["evaluations"]
    assert {k: evaluated["scores"][k] for k in ERRORS} == pytest.approx({k: validation.scores[k] for k in ERRORS})
    line = next(l for l in out.stdout.splitlines() if l.startswith("ISBI 2012 errors"))
    assert f"pixel {evaluated['scores']['pixel_error']:.4f}" in line
