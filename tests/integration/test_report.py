"""`segbench report` (published vs measured) and `segbench eval` writing predictions for it."""
import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from segbench.app import report
from segbench.engine.evaluator import PredictionWriter
from segbench.record import Evaluation, RunRecord, SweepJob, Training

PAPER = {
    "experiment": "toy_recipe", "title": "A Toy Paper (2015)", "metric": "mIoU", "value": 60.0,
    "also": {"BF": 40.0, "warping_error": 0.1}, "split": "toy val", "extra_data": "COCO",
    "protocol": "single scale", "source": "Table 1",
    "comparable": {"label": "without COCO", "metric": "mIoU", "value": 55.0, "split": "toy val",
                   "source": "Table 2"},
    "deviations": ["no COCO pre-training"], "unstated": ["the learning rate"],
}


def write_run(path, paper=PAPER, finished=True, miou=0.5, smoke=False):
    summary = {"model": "segbench.models.toy.Toy", "data": "toy", "global_batch": 2, "crop_size": [32, 32],
               "params": {"total": 1_500_000}, "train_time_s": 12.5, "peak_memory_bytes": 3 * 2**30}
    scores = {"aAcc": 0.9, "mAcc": 0.6, "mIoU": miou, "fwIoU": 0.8, "BF": 0.45, "IoU": [miou], "Acc": [0.6]}
    validation = Evaluation("train", "val", {"scales": [1.0], "flip": True}, "SS+flip", str(path / "last.pt"),
                            10 if finished else 3, scores, ["thing"])
    RunRecord(status="finished" if finished else "running", iteration=10 if finished else 3, max_iters=10,
              config={"paper": paper, "smoke": smoke, "model": {"_target_": "x.Toy"}, "data": {"name": "toy"}},
              training=Training(summary, [], validation)).save(path)


def test_report_published_vs_measured(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "done")
    write_run(runs / "halfway", finished=False, miou=0.99)
    write_run(runs / "cli_run", paper=None)
    RunRecord(status="failed", error="CUDA out of memory", config={"paper": {**PAPER, "experiment": "other_recipe"}},
              sweep=SweepJob(3, ["experiment=other_recipe"])).save(runs / "failed")

    out = tmp_path / "REPORT.md"
    report.run(OmegaConf.create({"runs": str(runs), "output": str(out), "plot": None, "title": "t",
                                 "include_missing": True, "missing_reasons": None}))
    text = out.read_text()
    printed = capsys.readouterr().out
    assert "## Published vs measured" in printed and f"wrote {out}" in printed
    line = next(l for l in text.splitlines() if l.startswith("| toy_recipe |") and "| done |" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    row = dict(zip(report.PAPER_COLUMNS, cells))
    assert row["paper"] == "60.00" and row["measured"] == "50.00" and row["Δ"] == "-10.00"
    assert row["comparable"].startswith("55.00") and row["Δ comparable"] == "-5.00"
    assert row["extra data (paper)"] == "COCO" and row["measured protocol"] == "SS+flip"
    lines = text.splitlines()
    bf = lines[lines.index(line) + 1]  # the paper's other metrics of the same result follow it
    assert "| 40.00 |" in bf and "| 45.00 |" in bf and "| +5.00 |" in bf
    # a lower-is-better paper metric (U-Net's ISBI errors) gets its own row, and a run that did not
    # measure it shows nothing there (never 1 - aAcc passed off as an ISBI error)
    warping = [l for l in lines if "| warping_error (lower is better) | 0.1000000 |" in l]
    numbers = [[c.strip() for c in l.strip("|").split("|") if re.fullmatch(r"[-+]?\d+\.\d+", c.strip())] for l in warping]
    assert warping and all(n == ["0.1000000"] for n in numbers), warping  # the paper's value alone
    # an unfinished run shows its state, never its number
    unfinished = next(l for l in text.splitlines() if l.startswith("| toy_recipe |") and "halfway" in l)
    assert "unfinished 3/10 it" in unfinished and "99.00" not in text
    assert "| failed |" in next(l for l in text.splitlines() if l.startswith("| other_recipe |"))
    assert "| failed: CUDA out of memory |" in text  # the runs table says why
    # every experiment file without a run is listed as not run
    assert "| fcn8s_vgg16_voc | mIoU | 62.70 |" in text and "not run" in text
    # runs table: conditions, params, time, memory; deviations section
    assert "| cli_run | Toy | toy | val | SS+flip | 10/10 | 2 | 32x32 | 50.00 |" in text
    assert "| 1.50 | 12.5 s | 3.00 |" in text
    assert "- deviation: no COCO pre-training" in text and "- not stated by the paper: the learning rate" in text
    png = tmp_path / "REPORT.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![published vs measured](REPORT.png)" in text


def test_smoke_runs_are_labelled(tmp_path):
    write_run(tmp_path / "runs" / "a", smoke=True)
    markdown, _, rows = report.build_report(report.collect_runs(tmp_path / "runs"))
    assert "SMOKE RUN" in markdown and rows[0]["experiment"] == "toy_recipe (smoke)"
    assert rows[0]["measured"] == "50.00 (smoke)"


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")  # a tiny net, in this process
def test_eval_saves_predictions_and_keeps_the_run_summary(tiny_cfg, tmp_path, cli_in_process):
    from segbench.engine.trainer import Trainer

    run = tmp_path / "run"
    Trainer(tiny_cfg("trainer.max_iters=2", "trainer.val_interval=2"), run).fit()
    trained = json.loads((run / "run.json").read_text())["training"]
    out = cli_in_process("eval", f"run={run}", "which=last.pt", "save_predictions=color", "num_panels=2",
                         "protocol.flip=true", "protocol.boundary_f1=true", "protocol.scales=[0.75,1.0]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "protocol: MS(0.75,1)+flip" in out.stdout and " BF " in out.stdout
    assert json.loads((run / "run.json").read_text())["training"] == trained  # training's record untouched
    (evaluated,) = RunRecord.load(run).evaluations
    assert evaluated.source == "eval" and evaluated.protocol_name == "MS(0.75,1)+flip +BF"
    assert evaluated.protocol["flip"] is True and evaluated.protocol["scales"] == [0.75, 1.0]
    assert 0 <= evaluated.scores["BF"] <= 1
    predictions = sorted((run / "predictions" / "val").glob("*.png"))
    assert len(predictions) == 8  # every val image of the tiny synthetic set
    image = np.array(Image.open(predictions[0]))
    assert image.shape == (32, 32, 3)
    panels = sorted((run / "predictions" / "val" / "panels").glob("*.png"))
    assert len(panels) == 2 and np.array(Image.open(panels[0])).shape == (32, 96, 3)  # image | GT | prediction


def test_label_id_predictions_use_the_dataset_encoding(tmp_path):
    from segbench.data.cityscapes import Cityscapes
    from segbench.data.transforms import eval_pipeline
    from tests.fixtures.datasets import make_cityscapes

    dataset = Cityscapes(make_cityscapes(tmp_path / "cityscapes"), "val", transform=eval_pipeline())
    sample = dataset[0]
    batch = {"image": sample["image"][None], "label": sample["label"][None], "id": [sample["id"]]}
    pred = torch.zeros(1, *sample["label"].shape, dtype=torch.long)
    pred[0, :, :10] = 13  # train id 13 = car = label id 26
    writer = PredictionWriter(dataset, tmp_path / "out", "labelIds", num_panels=1)
    writer(batch, pred)
    written = np.array(Image.open(writer.written[0]))
    assert writer.written[0].name.endswith("_leftImg8bit.png")  # the name cityscapesScripts matches
    assert set(np.unique(written[:, :10])) == {26} and set(np.unique(written[:, 10:])) == {7}  # road = 7
    assert (tmp_path / "out" / "panels").is_dir()
