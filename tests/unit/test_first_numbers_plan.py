"""scripts/first_numbers.py's decisions: the full recipe or the curve, and how a row is labelled."""
import importlib
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO


@pytest.fixture(scope="module")
def fn():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        yield importlib.import_module("first_numbers")
    finally:
        sys.path.remove(str(REPO / "scripts"))


TRAINER = OmegaConf.create({"max_iters": 10000, "val_interval": 1000})


def test_the_full_recipe_runs_when_it_fits(fn):
    decision = fn.plan(TRAINER, {"step_s": 0.05, "eval_batch_s": 0.02}, 900.0, 26, 59, 4)
    # 10000 x 0.05 + 10 validations x 26 x 0.02 + 59 x 0.02 + startup
    assert decision["full_recipe_s"] == pytest.approx(500 + 5.2 + 1.18 + fn.STARTUP_S, abs=0.1)
    assert "fit_iters" not in decision and decision["val_interval"] == 1000
    assert decision["decision"].startswith("The full recipe fits")


def test_a_short_budget_says_so_up_front_and_plans_a_curve(fn):
    decision = fn.plan(TRAINER, {"step_s": 0.1, "eval_batch_s": 0.02}, 300.0, 26, 59, 4)
    assert decision["full_recipe_s"] > 300 and "does NOT fit" in decision["decision"]
    assert "not the recipe's number" in decision["decision"]
    room = 300 - 59 * 0.02 - fn.STARTUP_S - 4 * 26 * 0.02
    assert decision["fit_iters"] == int(room / 0.1)
    assert decision["val_interval"] == decision["fit_iters"] // 4  # at least 4 curve points


def test_an_incomplete_run_is_never_labelled_the_recipe(fn):
    header = {"dry_run": False, "command": "x", "budget_s": 480, "started": "now"}
    row = {"experiment": "segnet_basic_camvid", "iterations": 3000, "planned_iterations": 10000,
           "recipe_complete": False, "metrics": [{"metric": "mIoU", "paper": 47.7, "measured": 30.1}]}
    md = fn.markdown(header, [row])
    assert "| 3000 of 10000 | curve point (not the recipe's number) |" in md and "| recipe |" not in md
    assert "| recipe |" in fn.markdown(header, [{**row, "iterations": 10000, "recipe_complete": True}])
    assert fn.cell(0.000353) == "0.000353" and fn.cell(47.7) == "47.70" and fn.cell(None, "—") == "—"
