"""The three errors of the ISBI 2012 EM segmentation challenge, as its organisers computed them.

U-Net's Table 1 ranks the challenge by *warping error*, *Rand error* and *pixel error*, the
challenge's original metrics (Arganda-Carreras et al., Front. Neuroanat. 2015, "Crowdsourcing the
creation of image segmentation algorithms for connectomics"; brainiac2.mit.edu/isbi_challenge,
"Evaluation", the dismissed metrics). The organisers computed them with Fiji's
``trainableSegmentation.metrics`` (``PixelError``, ``RandError``, ``WarpingError``); this module
follows those definitions:

* The proposal is a probability map, high = cell (the labels' polarity: 255 = cell interior,
  0 = membrane), so a membrane probability ``p`` enters as ``1 - p``. It is binarised with
  ``proposal > th`` at every threshold of a sweep; labels are binary (``label > 0`` = cell).
* **pixel error** = 1 - the best F-score over ``th`` in 0.0, 0.1, ..., 1.0 of pixel
  classification, cell = positive: ``F = 2PR / (P + R)``, with TP / FP / FN summed over all
  slices of the stack before P and R (``PixelError.getPixelErrorMaximalFScore(0, 1, 0.1)``).
  Not ``1 - accuracy``.
* **Rand error** = 1 - the best F-score over the same thresholds of the foreground-restricted
  Rand index: segments are the 4-connected components of the cells (label) and of the
  thresholded proposal; pairs of pixels are counted only among the label's cell pixels (its
  background, the membranes, is pruned), and proposal pixels on a membrane (its zero component)
  belong to no segment. TP = pairs in one label segment and one proposal segment, precision =
  TP / pairs in one proposal segment, recall = TP / pairs in one label segment; counts summed
  over slices (``RandError``, foreground-restricted, n-choose-2 pair counts).
* **warping error** (Jain et al., CVPR 2010, as the challenge's "minimum splits and mergers
  warping error"): the *label* is warped towards the thresholded proposal by flipping simple
  pixels only (digital topology: cells 4-connected, membranes 8-connected, the frame a
  membrane), most confident proposal pixels first, pass after pass until the number of
  disagreements stops changing. Each pixel still in disagreement is classified from the warped
  label's 4-connected cells around it (merge, split, hole or object addition/deletion); the error
  is the number of *split and merge* pixels / all pixels of the stack, minimised over
  ``th`` in 0.0, 0.1, ..., 0.9 (``WarpingError.getMinimumSplitsAndMergersErrorValue(0, 0.9, 0.1,
  false)``).

Where this differs from Fiji, and why, is said where it happens (flip order on ties,
``_flip_order``). :class:`ISBIErrors` accumulates the per-threshold counts slice by slice, so a
split's errors come out exactly as the challenge computes them on a whole stack.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage

from segbench.metrics.boundary import to_numpy

#: the names run.json, the report and the recipe table use (stable: scripts read them)
METRICS = ("warping_error", "rand_error", "pixel_error")
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


def sweep(start: float, stop: float, step: float) -> tuple[float, ...]:
    """Fiji's ``for (th = start; th <= stop; th += step)``: repeated addition, so 0..1 by 0.1
    gives 11 thresholds (the last 0.9999999999999999) and 0..0.9 gives 10."""
    out, th = [], start
    while th <= stop:
        out.append(th)
        th += step
    return tuple(out)


F_THRESHOLDS = sweep(0.0, 1.0, 0.1)     # pixel and Rand error
WARP_THRESHOLDS = sweep(0.0, 0.9, 0.1)  # warping error


def f_score(tp: float, fp: float, fn: float) -> float:
    """2PR / (P + R); 0 where nothing was predicted or nothing matched."""
    if tp <= 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def cells(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean cell mask (0 = membrane)."""
    return ndimage.label(mask, structure=_CROSS)[0]


# ---- pixel and Rand counts ---------------------------------------------------------------------
def pixel_counts(label: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(TP, FP, FN) of cell pixels for one binary slice."""
    tp = np.count_nonzero(label & cell)
    return np.array([tp, np.count_nonzero(cell) - tp, np.count_nonzero(label) - tp], dtype=np.float64)


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def rand_counts(label_segments: np.ndarray, proposal_segments: np.ndarray) -> np.ndarray:
    """(TP, FP, FN) pixel-pair counts of the foreground-restricted Rand index (module docstring)
    for two segmentations (0 = background, other ids = segments)."""
    inside = label_segments > 0  # the label's background is pruned
    g = label_segments[inside].astype(np.int64)
    p = proposal_segments[inside].astype(np.int64)
    same_label = _pairs(np.bincount(g))
    assigned = p > 0  # proposal background pixels are in no segment
    same_proposal = _pairs(np.bincount(p[assigned]))
    joint = g[assigned] * (int(p.max(initial=0)) + 1) + p[assigned]
    tp = _pairs(np.unique(joint, return_counts=True)[1])
    return np.array([tp, same_proposal - tp, same_label - tp])


# ---- warping ----------------------------------------------------------------------------------
# the 8 neighbours, bit k of a neighbourhood code = neighbour k
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
_EDGE = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)


def _patch(code: int) -> np.ndarray:
    patch = np.zeros((3, 3), dtype=bool)
    for k, (dy, dx) in enumerate(_RING):
        patch[1 + dy, 1 + dx] = bool((code >> k) & 1)
    return patch


def _is_simple(code: int) -> bool:
    """Flipping the centre of this 3x3 neighbourhood keeps the topology of the (4, 8) picture
    (cells 4-connected, membrane 8-connected; Kong & Rosenfeld 1989): exactly one 4-connected
    group of cells 4-adjacent to the centre and exactly one 8-connected group of membrane among
    the 8 neighbours. Whatever the centre's own value (what Fiji's ``simple2DBertrand(patch, 4)``
    decides through Bertrand and Malandain's 3-D test)."""
    patch = _patch(code)
    cell_groups = ndimage.label(patch, structure=_CROSS)[0]
    touching = len(set(cell_groups[_EDGE].tolist()) - {0})
    membrane = ~patch
    membrane[1, 1] = False
    return touching == 1 and ndimage.label(membrane, structure=np.ones((3, 3)))[1] == 1


SIMPLE = np.array([_is_simple(code) for code in range(256)])
#: 4-connected groups of cell pixels among the 8 neighbours (the centre left out)
RING_GROUPS = np.array([ndimage.label(_patch(code), structure=_CROSS)[1] for code in range(256)])


def _codes(picture: np.ndarray, index: np.ndarray, stride: int) -> np.ndarray:
    """The 8-neighbour code of the pixels at flat ``index`` of a framed 0/1 ``picture``."""
    flat = picture.ravel()
    code = np.zeros(len(index), dtype=np.int64)
    for k, (dy, dx) in enumerate(_RING):
        code |= flat[index + dy * stride + dx].astype(np.int64) << k
    return code


def _flip_order(ys: np.ndarray, xs: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Visiting order of the disagreeing pixels (``confidence``: one value per pixel). Fiji
    visits them in descending ``|proposal - th|`` (most confident first), listed column by
    column (x outer, y inner), with a stable sort. Its comparator truncates
    differences below 1e-4 to a tie; this sort does not (the order of near-ties can differ)."""
    column_major = np.lexsort((ys, xs))
    return column_major[np.argsort(-confidence[column_major], kind="stable")]


def warp(label: np.ndarray, target: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The label (bool, True = cell) warped towards ``target`` (bool) by simple-pixel flips,
    pass after pass until a pass flips nothing (Fiji's ``simplePointWarp2d``, which stops when
    the number of disagreements stops changing: the same, since a flip only ever removes a
    disagreement); ``confidence`` (= ``|proposal - th|``) orders the flips."""
    height, width = label.shape
    stride = width + 2
    source = np.zeros((height + 2, width + 2), dtype=np.uint8)  # the frame is membrane
    source[1:-1, 1:-1] = label
    ys, xs = np.nonzero(source[1:-1, 1:-1] != target)
    order = _flip_order(ys, xs, confidence[ys, xs])
    todo = ((ys[order] + 1) * stride + xs[order] + 1).tolist()  # every pass keeps this order
    offsets = [dy * stride + dx for dy, dx in _RING]
    simple = SIMPLE.tolist()
    flat = source.ravel()  # a view: flips are written to both it and the list
    pixels = flat.tolist()  # per-pixel access from Python is ~10x faster on a list than an array
    while todo:
        codes = _codes(source, np.asarray(todo), stride).tolist()
        stale = bytearray(len(pixels))  # pixels whose code a flip in this pass has changed
        remaining = []
        for i, code in zip(todo, codes):
            if stale[i]:
                code = 0
                for k, off in enumerate(offsets):
                    code |= pixels[i + off] << k
            if simple[code]:
                pixels[i] ^= 1
                flat[i] = pixels[i]
                for off in offsets:
                    stale[i + off] = 1
            else:
                remaining.append(i)
        if len(remaining) == len(todo):
            break
        todo = remaining
    return source[1:-1, 1:-1].astype(bool)


def split_merge_pixels(warped: np.ndarray, target: np.ndarray) -> int:
    """How many of the pixels where ``warped`` and ``target`` still disagree are splits or merges
    (Fiji's ``classifyMismatches2d`` with the whole image as the radius, then counted pixel by
    pixel: ``clusterMismatchesByType``). With the warped label's 4-connected cells around a pixel
    (its 8 neighbours inside the image, 0 = membrane): three or more distinct ids -> merge (the
    pixel is membrane) or split (it is a cell); two ids and the pixel a cell -> a split if taking
    the pixel out of its cell cuts the cell's neighbours of it apart; the rest are hole or
    object additions/deletions, which this error does not count."""
    ys, xs = np.nonzero(warped != target)
    if len(ys) == 0:
        return 0
    segments = cells(warped)
    framed = np.pad(segments, 1, constant_values=-1)  # -1 = outside the image, not a neighbour
    ring = np.stack([framed[ys + 1 + dy, xs + 1 + dx] for dy, dx in _RING], axis=1)
    ring_sorted = np.sort(ring, axis=1)
    distinct = 1 + (np.diff(ring_sorted, axis=1) != 0).sum(axis=1) - (ring_sorted[:, 0] == -1)
    centre = segments[ys, xs]
    count = int((distinct >= 3).sum())
    # two ids and a cell pixel: its ring holds only membrane and its own cell; if those cell
    # neighbours are one 4-connected group around it they stay connected without it (no split)
    ring_code = (ring > 0).astype(np.int64) << np.arange(8)
    maybe = (distinct == 2) & (centre > 0) & (RING_GROUPS[ring_code.sum(axis=1)] >= 2)
    boxes = ndimage.find_objects(segments)
    for y, x, k in zip(ys[maybe], xs[maybe], centre[maybe]):
        count += _cuts_cell(segments, boxes[k - 1], int(y), int(x), int(k))
    return count


def _cuts_cell(segments: np.ndarray, box: tuple[slice, slice], y: int, x: int, k: int) -> bool:
    """Does removing pixel (y, x) from cell ``k`` leave its neighbours in cell ``k`` in two or more
    4-connected pieces? (Only cell ``k`` changes, so only its bounding box is relabelled.)"""
    cell = segments[box] == k
    cy, cx = y - box[0].start, x - box[1].start
    cell[cy, cx] = False
    pieces = cells(cell)
    around = {int(pieces[cy + dy, cx + dx]) for dy, dx in _RING
              if 0 <= cy + dy < cell.shape[0] and 0 <= cx + dx < cell.shape[1]}
    return len(around - {0}) >= 2


# ---- per-slice counts and the stack's errors ----------------------------------------------------
def slice_counts(membrane_prob: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """Everything the three errors need from one slice, per threshold: ``pixel`` and ``rand``
    (len(F_THRESHOLDS) x (TP, FP, FN)), ``warp`` (split + merge pixels per WARP_THRESHOLDS) and
    ``pixels``. ``membrane_prob`` H x W in [0, 1]; ``label`` H x W, nonzero = cell."""
    membrane_prob = np.asarray(membrane_prob, dtype=np.float64)
    label = np.asarray(label) > 0
    if membrane_prob.shape != label.shape or membrane_prob.ndim != 2:
        raise ValueError(f"membrane probability {membrane_prob.shape} and label {label.shape} "
                         f"must be two H x W slices of one size")
    proposal = 1.0 - membrane_prob  # the challenge's polarity: high = cell, as the labels
    label_segments = cells(label)
    pixel, rand = [], []
    for th in F_THRESHOLDS:
        cell = proposal > th
        pixel.append(pixel_counts(label, cell))
        rand.append(rand_counts(label_segments, cells(cell)))
    warped = []
    for th in WARP_THRESHOLDS:
        target = proposal > th
        warped.append(split_merge_pixels(warp(label, target, np.abs(proposal - th)), target))
    return {"pixel": np.array(pixel), "rand": np.array(rand), "warp": np.array(warped, dtype=np.float64),
            "pixels": np.array(float(label.size))}


def errors_from_counts(counts: dict[str, np.ndarray]) -> dict[str, float]:
    """The three errors of a stack from its summed :func:`slice_counts`."""
    best_pixel = max(f_score(*row) for row in counts["pixel"])
    best_rand = max(f_score(*row) for row in counts["rand"])
    return {"warping_error": float(counts["warp"].min() / counts["pixels"]),
            "rand_error": float(1.0 - best_rand), "pixel_error": float(1.0 - best_pixel)}


def isbi_errors(membrane_prob: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """``{"warping_error", "rand_error", "pixel_error"}`` of one slice (H x W) or a stack
    (N x H x W, thresholds chosen once for the stack, as the challenge scores its 30 slices)."""
    errors = ISBIErrors()
    errors.update(membrane_prob, label)
    return errors.compute()


class ISBIErrors:
    """Accumulates :func:`slice_counts` over a split: ``update(membrane_prob, label)`` with
    N x H x W (or H x W) arrays or tensors; ``compute()`` -> the three errors (fractions)."""

    def __init__(self):
        self.counts: dict[str, np.ndarray] | None = None
        self.slices = 0

    def update(self, membrane_prob, label) -> None:
        membrane_prob, label = to_numpy(membrane_prob), to_numpy(label)
        if label.ndim == 2:
            membrane_prob, label = membrane_prob[None], label[None]
        for prob, lab in zip(membrane_prob, label):
            counts = slice_counts(prob, lab)
            self.counts = counts if self.counts is None else {k: self.counts[k] + v for k, v in counts.items()}
            self.slices += 1

    def reduce(self) -> None:
        """Sum over processes under torch.distributed (call on every rank)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.counts is None:  # a rank without slices still joins every all_reduce
            self.counts = {"pixel": np.zeros((len(F_THRESHOLDS), 3)), "rand": np.zeros((len(F_THRESHOLDS), 3)),
                           "warp": np.zeros(len(WARP_THRESHOLDS)), "pixels": np.array(0.0)}
        for key, value in self.counts.items():
            tensor = torch.as_tensor(value, dtype=torch.float64)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            self.counts[key] = tensor.numpy()

    def compute(self) -> dict[str, float]:
        if self.counts is None or not self.counts["pixels"]:
            return {name: float("nan") for name in METRICS}
        return errors_from_counts(self.counts)
