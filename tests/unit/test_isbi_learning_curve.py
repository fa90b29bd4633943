"""benchmarks/isbi_learning_curve.py: sessions add up (a resumed run extends the curve), a stopped
run's eval joins the validations, and the table sets the paper's three errors beside them."""
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("isbi_learning_curve")


def test_two_sessions_make_one_curve(monkeypatch):
    lc = load(monkeypatch)
    sessions = [{"start": 1000.0, "end": 1600.0, "minutes": 10, "load_start": 2.0, "load_end": 3.0, "rc": 130,
                 "stop": {"iteration": 15, "scores": {"mIoU": 0.5, "warping_error": 0.001, "rand_error": 0.2,
                                                      "pixel_error": 0.1}}},
                {"start": 5000.0, "end": 5300.0, "minutes": 5, "load_start": 2.0, "load_end": 2.5, "rc": 130}]
    tags = {"val/mIoU": [(10, 1300.0, 0.4), (20, 5120.0, 0.6)],
            "val/warping_error": [(10, 1300.0, 0.002), (20, 5120.0, 0.0005)],
            "val/rand_error": [(10, 1300.0, 0.3), (20, 5120.0, 0.1)],
            "val/pixel_error": [(10, 1300.0, 0.2), (20, 5120.0, 0.09)],
            "train/loss": [(10, 1290.0, 0.7), (20, 5110.0, 0.5)]}
    assert lc.elapsed(5120.0, sessions) == 600 + 120  # the gap between the sessions does not count
    rows = lc.curve(tags, sessions)
    assert [(r["iteration"], r["wall_min"], r["scored by"]) for r in rows] == [
        (10, 5.0, "validation"), (15, 10.0, "eval of last.pt"), (20, 12.0, "validation")]
    assert rows[1]["rand_error"] == 0.2 and rows[1]["loss"] == 0.7 and rows[2]["mIoU"] == 60.0
    saved = {"command": "python benchmarks/isbi_learning_curve.py", "machine": "a CPU", "sessions": sessions,
             "curve": rows, "step_s": 30.0, "flops_per_step": 9e11}
    text = lc.table(saved)
    assert "Iterations done: **20** of the recipe's 20,000" in text
    assert "| paper (Table 1) |  |  | 0.0003529 | 0.0382 | 0.0611 |" in text
    assert "| 20 | 12.0 | 60.0 | 0.0005000 | 0.1000 | 0.0900 | 0.5 | validation |" in text
    assert "Sessions: 2, 15 min" in text and "Measured step: 30.00 s" in text
