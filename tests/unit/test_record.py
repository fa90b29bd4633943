"""run.json (segbench.record): one versioned file, one reader with clear errors, atomic writes;
and the one aggregator (segbench.app.aggregate) that report, runs and the sweep summary share."""
import ast
import json
import math
import sys
from pathlib import Path

import pytest

from segbench import record as record_module
from segbench.errors import SegbenchError
from segbench.record import (FILE, SCHEMA, Bench, Best, Evaluation, RunRecord, SweepJob, Training, TrainingSummary,
                             edit)

PACKAGE = Path(__file__).resolve().parents[2] / "segbench"


def evaluation(source="train", miou=0.5, checkpoint="/r/last.pt", scales=(1.0,)) -> Evaluation:
    return Evaluation(source, "val", {"scales": list(scales), "flip": False}, "SS", checkpoint, 4,
                      {"aAcc": 0.9, "mAcc": 0.6, "mIoU": miou, "fwIoU": 0.8, "IoU": [0.5, math.nan], "Acc": [0.6, 0.0]},
                      ["a", "b"])


def full_record() -> RunRecord:
    return RunRecord(kind="train", status="interrupted", iteration=3, max_iters=8, error="",
                     config={"model": {"_target_": "x.Toy"}, "paper": None},
                     training=Training(TrainingSummary(global_batch=2, best=Best("mIoU", 0.5, 2)),
                                       [{"iteration": 2, "changed": {}}], evaluation()),
                     evaluations=[evaluation("eval", 0.4, "/r/best.pt")], sweep=SweepJob(1, ["model=a"], 2))


def test_round_trip_keeps_every_field(tmp_path):
    written = full_record()
    written.save(tmp_path)
    data = json.loads((tmp_path / FILE).read_text())
    assert data["schema"] == SCHEMA and data["status"] == "interrupted"
    read = RunRecord.load(tmp_path)
    assert math.isnan(read.training.validation.scores["IoU"][1])  # NaN survives (absent class)
    read.training.validation.scores["IoU"][1] = written.training.validation.scores["IoU"][1] = 0.0
    read.evaluations[0].scores["IoU"][1] = written.evaluations[0].scores["IoU"][1] = 0.0
    assert read == written and isinstance(read.training.validation, Evaluation) and isinstance(read.sweep, SweepJob)


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable run record"),
    ('{"status": "finished"}', "not a segbench run record"),
    ('["a list"]', "not a segbench run record"),
    (json.dumps({"schema": SCHEMA, "status": "exploded"}), "malformed run record"),
    (json.dumps({"schema": SCHEMA, "training": {"summary": {}, "oops": 1}}), "malformed run record"),
    (json.dumps({"schema": SCHEMA, "evaluations": [{"split": "val"}]}), "malformed run record"),
    (json.dumps({"schema": SCHEMA, "config": ["not", "a", "dict"]}), "malformed run record"),
])
def test_malformed_or_foreign_file_is_one_segbench_error(tmp_path, content, message):
    (tmp_path / FILE).write_text(content)
    with pytest.raises(SegbenchError, match=message) as err:
        RunRecord.load(tmp_path)
    assert str(tmp_path / FILE) in str(err.value)
    with pytest.raises(SegbenchError, match="no run record"):
        RunRecord.load(tmp_path / "elsewhere")


def test_the_best_record_names_its_metric(tmp_path):
    """run.json says which score best.pt was kept by (aAcc for SegNet-Basic), not best_mIoU."""
    summary = TrainingSummary(best=Best("aAcc", 0.921, 40))
    RunRecord(status="finished", training=Training(summary)).save(tmp_path)
    written = json.loads((tmp_path / FILE).read_text())["training"]["summary"]
    assert written["best"] == {"metric": "aAcc", "value": 0.921, "iteration": 40} and "best_mIoU" not in written
    assert RunRecord.load(tmp_path).training.summary.best == Best("aAcc", 0.921, 40)


@pytest.mark.parametrize("config, metric", [({"trainer": {"select_by": "aAcc"}}, "aAcc"), ({}, "mIoU")])
def test_an_old_record_with_best_miou_still_loads(tmp_path, config, metric):
    """best_mIoU held the run's trainer.select_by score; keys this version does not know are left
    out and missing ones take their defaults."""
    old = {"schema": SCHEMA, "status": "finished", "config": config,
           "training": {"summary": {"global_batch": 4, "best_mIoU": 0.5, "from_another_version": 1},
                        "resumes": [], "validation": None}}
    (tmp_path / FILE).write_text(json.dumps(old))
    summary = RunRecord.load(tmp_path).training.summary
    assert summary.best == Best(metric, 0.5, None) and summary.global_batch == 4 and summary.params is None
    old["training"]["summary"]["best_mIoU"] = -1.0  # a checkpoint before the first validation: none yet
    (tmp_path / FILE).write_text(json.dumps(old))
    assert RunRecord.load(tmp_path).training.summary.best is None


def test_the_bench_part_is_typed_and_tolerates_other_keys(tmp_path):
    RunRecord(kind="bench", status="finished", bench=Bench(device="cpu", models=[{"model": "unet"}])).save(tmp_path)
    data = json.loads((tmp_path / FILE).read_text())
    data["bench"]["from_another_version"] = 1
    del data["bench"]["paper"]
    (tmp_path / FILE).write_text(json.dumps(data))
    bench = RunRecord.load(tmp_path).bench
    assert isinstance(bench, Bench) and bench.models == [{"model": "unet"}] and bench.paper == {}


def test_newer_schema_says_so(tmp_path):
    (tmp_path / FILE).write_text(json.dumps({"schema": "segbench.run/2", "status": "finished"}))
    with pytest.raises(SegbenchError, match="segbench.run/2.*another version of segbench"):
        RunRecord.load(tmp_path)


def test_write_is_atomic_and_a_failed_edit_keeps_the_old_record(tmp_path, monkeypatch):
    full_record().save(tmp_path)
    before = (tmp_path / FILE).read_bytes()

    import segbench.io

    def crash(tmp, target):  # the new record is fully in its temp file; the rename never happens
        assert Path(tmp).read_text().startswith("{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segbench.io.os, "replace", crash)
    with pytest.raises(OSError):
        with edit(tmp_path) as record:
            record.status = "failed"
    monkeypatch.undo()
    assert (tmp_path / FILE).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [FILE]

    with pytest.raises(RuntimeError):  # an error inside the block writes nothing
        with edit(tmp_path) as record:
            record.status = "failed"
            raise RuntimeError
    assert (tmp_path / FILE).read_bytes() == before


def test_edit_changes_only_its_part(tmp_path):
    full_record().save(tmp_path)
    training = json.loads((tmp_path / FILE).read_text())["training"]
    with edit(tmp_path) as record:
        record.evaluations.append(evaluation("eval", 0.3, "/r/last.pt", scales=(0.5, 1.0)))
    after = json.loads((tmp_path / FILE).read_text())
    assert after["training"] == training and len(after["evaluations"]) == 2
    with edit(tmp_path / "new", kind="eval", status="finished") as record:  # no record yet: made from `new`
        assert record.kind == "eval" and record.training is None


def test_record_module_is_bottom_layer():
    """stdlib, omegaconf, segbench.io and segbench.errors only: the engine may import it."""
    tree = ast.parse((PACKAGE / "record.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    allowed = {"segbench.io", "segbench.errors", "omegaconf", "__future__"}
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} <= allowed, imported


# ---- the aggregator: one status for one run dir, whichever verb asks ------------------------------
STATES = {"finished": "done", "running": "unfinished", "interrupted": "interrupted", "failed": "failed"}


def make_runs(root: Path) -> None:
    for num, status in enumerate(STATES):
        run = full_record()
        run.status, run.error = status, "RuntimeError: boom" if status == "failed" else ""
        run.sweep = SweepJob(num, [f"model={status}"])
        run.save(root / status)
    (root / "broken").mkdir()
    (root / "broken" / FILE).write_text("{half")


def test_report_runs_and_sweep_summary_agree_on_status(tmp_path, capsys):
    from omegaconf import OmegaConf

    from segbench.app import report, runs, sweep

    make_runs(tmp_path)
    listed = {r.name: r.status for r in runs.run(OmegaConf.create({"runs": str(tmp_path)}))}
    reported = {r["run"]: r["status"].split(",")[0].split(":")[0] for r in report.build_report(
        report.collect_runs(tmp_path))[1] if "[eval" not in r["run"]}
    summarised = {r["job"]: r["status"] for r in sweep.collect_jobs(tmp_path)}
    expected = {name: shown for name, shown in STATES.items()}
    assert summarised == expected
    assert listed == reported == {**expected, "broken": "unreadable"}
    done = [r for r in sweep.collect_jobs(tmp_path) if r["status"] == "done"]
    unfinished = [r for r in sweep.collect_jobs(tmp_path) if r["status"] != "done"]
    assert done[0]["mIoU"] == 50.0 and all(r["mIoU"] == "" for r in unfinished)  # a number only when done


def test_no_reader_opens_a_checkpoint(tmp_path, monkeypatch, capsys):
    """report and runs read run.json only: torch.load is never called, even beside a checkpoint."""
    import torch
    from omegaconf import OmegaConf

    from segbench.app import report, runs

    make_runs(tmp_path)
    torch.save({"config": {"paper": {"value": 1}}}, tmp_path / "finished" / "last.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("a reader opened a checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    runs.run(OmegaConf.create({"runs": str(tmp_path)}))
    report.run(OmegaConf.create({"runs": str(tmp_path), "output": str(tmp_path / "R.md"), "plot": None,
                                 "include_missing": False}))
    assert "| finished |" in (tmp_path / "R.md").read_text()


def test_the_walk_finds_nested_runs_and_skips_hidden_folders(tmp_path):
    from segbench.app.aggregate import find

    for where in ("a", "sweep/x/y", ".hidden/z"):
        full_record().save(tmp_path / where)
    assert [p.relative_to(tmp_path).as_posix() for p in find(tmp_path)] == ["a", "sweep/x/y"]
    assert record_module.FILE == "run.json"
