"""The ISBI 2012 challenge's warping / Rand / pixel errors against hand-worked cases.

The pictures are 7 x 9 slices with a one-pixel membrane frame, so the inside is 5 rows x 7
columns = 35 pixels; a vertical membrane line at column 4 (5 pixels) cuts it into two cells of
15 pixels (columns 1-3 and 5-7). Predictions are hard (membrane probability 0 or 1), so every
threshold of the sweeps gives the same binary proposal.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from segbench.metrics import isbi as isbi_metrics
from segbench.metrics.isbi import ISBIErrors, cells, isbi_errors, rand_counts, split_merge_pixels, warp

PIXELS = 7 * 9
ISBI = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi"


def picture(*lines: int) -> np.ndarray:
    """Cell mask (True = cell): the framed 7 x 9 slice with membrane lines at these columns."""
    cell = np.zeros((7, 9), dtype=bool)
    cell[1:-1, 1:-1] = True
    for column in lines:
        cell[1:-1, column] = False
    return cell


def prediction(cell: np.ndarray) -> np.ndarray:
    """A hard membrane probability map of a cell mask."""
    return np.where(cell, 0.0, 1.0)


def test_a_prediction_equal_to_the_label_scores_zero():
    for label in (picture(), picture(4), picture(2, 6)):
        assert isbi_errors(prediction(label), label) == {"warping_error": 0.0, "rand_error": 0.0,
                                                         "pixel_error": 0.0}


def test_split():
    """One cell of 35 px, predicted cut in two by a membrane line (15 + 15 px, 5 px of line).

    pixel: TP 30, FP 0, FN 5 -> F = 60/65, error 5/65. Rand: label pairs C(35,2) = 595, proposal
    pairs = TP = 2 C(15,2) = 210 -> P = 1, R = 210/595 = 6/17, F = 12/23, error 11/23. Warping:
    the line's pixels flip into the label's cell from the top (column order, equal confidence),
    all but the last one, which would cut the cell: 1 split pixel of 63.
    """
    errors = isbi_errors(prediction(picture(4)), picture())
    assert errors["pixel_error"] == pytest.approx(5 / 65)
    assert errors["rand_error"] == pytest.approx(11 / 23)
    assert errors["warping_error"] == pytest.approx(1 / PIXELS)


def test_merge():
    """Two cells of 15 px, predicted as one (the line predicted cell).

    pixel: TP 30, FP 5 -> error 5/65. Rand: label pairs = TP = 210, proposal pairs among the
    label's cell pixels C(30,2) = 435 -> P = 14/29, R = 1, F = 28/43, error 15/43. Warping: every
    pixel of the one-pixel line touches both cells, so none can become a cell without merging
    them: all 5 stay, each a merge pixel (the challenge counts pixels, not merges): 5/63.
    """
    errors = isbi_errors(prediction(picture()), picture(4))
    assert errors["pixel_error"] == pytest.approx(5 / 65)
    assert errors["rand_error"] == pytest.approx(15 / 43)
    assert errors["warping_error"] == pytest.approx(5 / PIXELS)


def test_shifted_border_costs_pixels_and_rand_but_no_topology():
    """The line predicted one column to the right (column 5 instead of 4).

    pixel: TP 25, FP 5, FN 5 -> F = 50/60, error 1/6. Rand: label segments 15 + 15; the proposal's
    left cell holds the 15 left pixels, its right cell 10 (column 5 is predicted membrane, in no
    segment): TP = C(15,2) + C(10,2) = 150 = proposal pairs, label pairs 210 -> R = 5/7, F = 5/6,
    error 1/6. Warping: moving a border is a chain of simple flips -> 0.
    """
    errors = isbi_errors(prediction(picture(5)), picture(4))
    assert errors["pixel_error"] == pytest.approx(1 / 6)
    assert errors["rand_error"] == pytest.approx(1 / 6)
    assert errors["warping_error"] == 0.0


def test_the_warp_moves_a_border_and_stops_at_a_split():
    assert np.array_equal(warp(picture(4), picture(5), np.ones((7, 9))), picture(5))
    warped = warp(picture(), picture(4), np.ones((7, 9)))
    assert (warped != picture(4)).sum() == 1 and warped[5, 4]  # the last line pixel stays a cell
    assert split_merge_pixels(warped, picture(4)) == 1


def test_hole_and_object_errors_are_not_counted():
    """A membrane blob inside a cell (a hole) and a lost cell (object deletion) are topology
    errors the challenge's warping error leaves out: only splits and merges count."""
    label = picture()
    holed = label.copy()
    holed[3, 3] = False  # an isolated membrane pixel inside the cell: a hole
    assert isbi_errors(prediction(holed), label)["warping_error"] == 0.0
    tiny = np.zeros((7, 9), dtype=bool)
    tiny[3, 3] = True  # a one-pixel cell predicted as membrane: object deletion
    assert isbi_errors(prediction(np.zeros((7, 9), dtype=bool)), tiny)["warping_error"] == 0.0


def test_a_stack_sums_counts_before_the_f_score():
    """Perfect + split slices: TP 35 + 30, FN 5 -> pixel error 5/135 (not the mean of 0 and 5/65)."""
    stack = np.stack([picture(), picture()])
    probs = np.stack([prediction(picture()), prediction(picture(4))])
    errors = isbi_errors(probs, stack)
    assert errors["pixel_error"] == pytest.approx(5 / 135)
    assert errors["warping_error"] == pytest.approx(1 / (2 * PIXELS))
    accumulated = ISBIErrors()
    accumulated.update(torch.from_numpy(probs[:1]).float(), torch.from_numpy(stack[:1]).long())
    accumulated.update(probs[1], stack[1])
    assert accumulated.compute() == pytest.approx(errors)


def test_the_best_threshold_is_chosen():
    """A soft prediction that is right only above 0.5: the sweep finds it (error 0)."""
    label = picture(4)
    membrane = np.where(label, 0.3, 0.8)  # cell pixels: 0.7 > th up to 0.6; membrane 0.2
    assert isbi_errors(membrane, label) == {"warping_error": 0.0, "rand_error": 0.0, "pixel_error": 0.0}
    # the inverse map: its best threshold (below 0.2) calls everything a cell: TP 30, FP 33
    assert isbi_errors(1.0 - membrane, label)["pixel_error"] == pytest.approx(33 / 93)


def test_the_threshold_sweeps_are_fijis():
    assert len(isbi_metrics.F_THRESHOLDS) == 11 and isbi_metrics.F_THRESHOLDS[-1] < 1.0
    assert len(isbi_metrics.WARP_THRESHOLDS) == 10 and isbi_metrics.WARP_THRESHOLDS[-1] == pytest.approx(0.9)


def test_simple_pixels():
    simple = isbi_metrics.SIMPLE
    assert not simple[0]        # an isolated cell pixel: flipping deletes an object
    assert not simple[255]      # surrounded by cell: flipping makes a hole
    assert simple[0b00000010]   # the tip of a line of cells
    assert not simple[0b00100010]  # the middle of a one-pixel-wide line: flipping cuts it
    assert simple[0b00000111]   # on a straight border


def test_rand_agrees_with_scikit_image_where_the_definitions_meet():
    """skimage's adapted_rand_error (SNEMI3D: 1 - F of the Rand pair counts, the label's 0
    ignored) counts the proposal's 0 as one more segment, where the challenge leaves proposal
    membrane pixels in no segment: the two coincide once every proposal membrane pixel is a
    segment of its own (a singleton adds no pair). skimage 0.26 names its ratios the other way
    round: its "precision" divides by the true image's pairs (the challenge's recall)."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    label = picture(3, 6)
    label[3, :] = False
    proposal = label ^ (rng.random(label.shape) < 0.15)
    proposal_segments = cells(proposal)
    singletons = np.where(proposal_segments > 0, proposal_segments,
                          proposal_segments.max() + 1 + np.arange(proposal.size).reshape(proposal.shape))
    tp, fp, fn = rand_counts(cells(label), proposal_segments)
    ours = 1 - isbi_metrics.f_score(tp, fp, fn)
    theirs, their_precision, their_recall = metrics.adapted_rand_error(cells(label), singletons)
    assert ours == pytest.approx(theirs)
    assert tp / (tp + fn) == pytest.approx(their_precision) and tp / (tp + fp) == pytest.approx(their_recall)
    # and they differ when the proposal's membrane is one segment
    assert metrics.adapted_rand_error(cells(label), proposal_segments)[0] != pytest.approx(ours)


@pytest.mark.skipif(not (ISBI / "train" / "label" / "27.png").is_file(), reason="ISBI 2012 data not in ../shared")
def test_a_real_slice_scores_zero_against_itself_and_positive_when_eroded():
    import cv2
    from scipy import ndimage

    label = cv2.imread(str(ISBI / "train" / "label" / "27.png"), cv2.IMREAD_GRAYSCALE)[:256, :256] > 127
    assert isbi_errors(prediction(label), label) == {"warping_error": 0.0, "rand_error": 0.0, "pixel_error": 0.0}
    thick = ndimage.binary_erosion(label, iterations=2)  # membranes 4 px thicker: no topology change expected
    errors = isbi_errors(prediction(thick), label)
    assert errors["pixel_error"] > 0 and errors["rand_error"] > 0
    assert errors["warping_error"] < errors["pixel_error"] / 10


class Oracle(torch.nn.Module):
    """Logits that put the label's class first by a margin: a perfect, confident prediction."""

    def __init__(self, label: torch.Tensor):
        super().__init__()
        self.label = label
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return {"out": 4.0 * torch.nn.functional.one_hot(self.label, 2).permute(0, 3, 1, 2).float()}


def test_evaluation_adds_the_three_errors_when_the_protocol_names_the_membrane_class():
    from segbench.engine.evaluator import evaluate, format_table, metrics_record
    from segbench.engine.protocol import Protocol, describe

    label = torch.from_numpy(np.stack([picture(4), picture()])).long()  # train ids: 0 membrane, 1 cell
    loader = [{"image": torch.zeros(2, 3, 7, 9), "label": label}]
    scores = evaluate(Oracle(label), loader, 2, torch.device("cpu"), protocol={"isbi_errors": 0},
                      progress=False).compute()
    assert {k: scores[k] for k in isbi_metrics.METRICS} == {"warping_error": 0.0, "rand_error": 0.0, "pixel_error": 0.0}
    assert "ISBI 2012 errors: warping 0.0000000  Rand 0.0000  pixel 0.0000" in format_table(scores, ["membrane", "cell"])
    record = metrics_record(scores, ["membrane", "cell"], "val", "x.pt", 1, {"isbi_errors": 0}, "eval")
    assert record.scores["rand_error"] == 0.0 and record.protocol_name == "SS +ISBI"
    # a prediction with a split on the second slice: TP 30 + 30, FN 5 -> pixel error 5/125
    split = torch.from_numpy(np.stack([picture(4), picture(4)])).long()
    loader = [{"image": torch.zeros(2, 3, 7, 9), "label": torch.from_numpy(np.stack([picture(4), picture()])).long()}]
    scores = evaluate(Oracle(split), loader, 2, torch.device("cpu"), protocol={"isbi_errors": 0},
                      progress=False).compute()
    assert scores["pixel_error"] == pytest.approx(5 / 125) and scores["warping_error"] == pytest.approx(1 / (2 * PIXELS))
    off = evaluate(Oracle(label), loader, 2, torch.device("cpu"), protocol={"isbi_errors": False}, progress=False)
    assert "warping_error" not in off.compute() and describe(Protocol.from_config({}).to_dict()) == "SS"


@pytest.mark.parametrize("value", [True, -1, "membrane", 0.5])
def test_isbi_errors_must_be_a_class_id(value):
    from segbench.engine.protocol import Protocol
    from segbench.errors import SegbenchError

    with pytest.raises(SegbenchError, match="isbi_errors is the membrane class id"):
        Protocol.from_config({"isbi_errors": value})


def test_data_isbi_turns_the_errors_on_and_other_datasets_do_not():
    from segbench.app import configs

    isbi = configs.compose("train", ["experiment=unet_isbi"])
    assert isbi.eval_protocol.isbi_errors == 0 and isbi.data.val_split == "val"
    assert configs.compose("train", ["data=camvid"]).eval_protocol.isbi_errors is None


def test_the_report_shows_the_measured_isbi_errors_never_one_minus_accuracy():
    from segbench.record import Evaluation
    from segbench.app.report import _delta, _fmt, measured_value

    scores = {"aAcc": 0.9, "warping_error": 0.0004, "rand_error": 0.05, "pixel_error": 0.07}
    scored = Evaluation("train", "val", {}, "SS +ISBI", "x.pt", 1, scores, ["membrane", "cell"])
    assert [measured_value(scored, m) for m in isbi_metrics.METRICS] == [0.0004, 0.05, 0.07]
    unscored = Evaluation("train", "val", {}, "SS", "x.pt", 1, {"aAcc": 0.9}, ["membrane", "cell"])
    assert measured_value(unscored, "pixel_error") is None  # a run scored before: n/a, not 1 - aAcc
    assert _fmt(0.0003529, "warping_error") == "0.0003529" and _fmt(0.0611, "pixel_error") == "0.0611"
    assert _delta(0.0004, 0.0003529, "warping_error") == "+0.0000471"


def test_the_recipe_table_gives_u_nets_three_published_errors():
    import importlib.util

    from segbench.app import configs

    spec = importlib.util.spec_from_file_location("recipe_table", Path(__file__).resolve().parents[2] / "scripts" / "recipe_table.py")
    recipe_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe_table)
    row = recipe_table.row("unet_isbi", configs.experiment("unet_isbi"))
    assert row[1] == "0.0611 pixel_error (warping_error 0.0003529, rand_error 0.0382)" and row[4] == "SS +ISBI"
