"""Format converters and the label codec every dataset shares.

Two halves:

* :class:`LabelCodec` — how a dataset turns its on-disk label values into train ids
  (``0..C-1``, 255 = ignore) with one 256-entry lookup table, and back again for saving
  predictions. Datasets mix it in; decoding is ``lut[label]``, never a per-pixel loop.
* the converters behind ``segbench data prepare`` (SBD ``.mat`` → PNG, Cityscapes labelIds →
  labelTrainIds, SUN RGB-D toolbox ``.mat`` → PNG). Every one of them is idempotent and
  atomic: each output file is written under a temporary name and renamed into place, a
  whole output folder is built beside its final name and renamed, and a completion marker
  (:func:`marker_path`) is written last. No marker means "not finished": the next
  ``prepare`` redoes the conversion from scratch instead of trusting what it finds.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np
from PIL import Image

from segbench.errors import CorruptFileError
from segbench.io import write_json, write_png, write_text  # noqa: F401 - re-exported

IGNORE = 255
MARKER_PREFIX = ".segbench-prepared-"


# ---- label codec --------------------------------------------------------------------------
class LabelCodec:
    """On-disk label values ↔ train ids, through a 256-entry lookup table.

    Subclasses set :attr:`raw_values` (what a valid label file may contain) and override
    :meth:`raw_to_train` (a dict from on-disk value to train id; anything not in it decodes
    to 255). The default is identity on ``0..C-1`` with 255 kept as ignore (VOC, CamVid-style).
    """

    raw_values: ClassVar[Sequence[int] | None] = None  # None: 0..C-1 and 255
    strict_values: ClassVar[bool] = True  # False: unexpected values are a warning in `data check`

    def raw_to_train(self) -> dict[int, int]:
        return {i: i for i in range(len(self.class_names))}  # type: ignore[attr-defined]

    @cached_property
    def lut(self) -> np.ndarray:
        lut = np.full(256, IGNORE, dtype=np.uint8)
        for raw, train in self.raw_to_train().items():
            lut[raw] = train
        return lut

    @cached_property
    def allowed_raw(self) -> np.ndarray:
        values = self.raw_values
        if values is None:
            values = [*range(len(self.class_names)), IGNORE]  # type: ignore[attr-defined]
        return np.asarray(sorted(values))

    @cached_property
    def outside_raw(self) -> np.ndarray:
        """A 256-entry table: True for the 8-bit values a valid label file never holds."""
        return ~np.isin(np.arange(256), self.allowed_raw)

    @cached_property
    def inverse_lut(self) -> np.ndarray:
        """train id → on-disk value (the first on-disk value that decodes to it, like
        cityscapesScripts' inverse mapping). Train id 255 maps to the first ignored value."""
        inv = np.zeros(256, dtype=np.uint8)
        ignored = [int(v) for v in self.allowed_raw if self.lut[v] == IGNORE]
        inv[:] = ignored[0] if ignored else IGNORE
        mapping = self.raw_to_train()
        for raw, train in sorted(mapping.items(), reverse=True):
            if train != IGNORE:
                inv[train] = raw
        return inv

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """On-disk label array → H×W uint8 train ids (values not in the table → 255)."""
        if raw.dtype == np.uint8:
            return self.lut[raw]
        out = self.lut[np.clip(raw, 0, 255).astype(np.uint8)]  # 16-bit or int PNGs
        out[(raw < 0) | (raw > 255)] = IGNORE
        return out

    def encode_label(self, train_ids) -> np.ndarray:
        """Train ids → the on-disk encoding (exact inverse of :meth:`decode` on valid ids)."""
        return self.inverse_lut[np.asarray(train_ids).astype(np.uint8)]

    def encode_prediction(self, pred_trainids) -> np.ndarray:
        """What to write for the dataset's official evaluation format: train ids (uint8)
        unless the benchmark wants something else (Cityscapes: label ids)."""
        return np.asarray(pred_trainids).astype(np.uint8)

    def save_prediction(self, pred_trainids, path: str | Path) -> Path:
        """Write :meth:`encode_prediction` as an 8-bit PNG (atomically)."""
        return write_png(self.encode_prediction(pred_trainids), path)

    def unexpected_values(self, raw: np.ndarray, path: Path | None = None) -> list[int]:
        """On-disk values present in ``raw`` that a valid label file never holds."""
        present = np.unique(raw)
        return [int(v) for v in present[~np.isin(present, self.allowed_raw)]]

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The label file's stored values (a palette PNG's indices, never its colours)."""
        return self.read_palette_png(path)  # type: ignore[attr-defined]

    def read_label(self, path: Path) -> np.ndarray:
        raw = self.read_raw_label(path)
        if raw.ndim != 2:
            raise CorruptFileError(
                f"corrupt or unreadable file: {path} (expected a single-channel label image, "
                f"got shape {raw.shape})")
        if raw.dtype == np.uint8 and self.strict_values:
            outside = self.outside_raw[raw]  # one table lookup per pixel
            if outside.any():
                from segbench.data.base import report_unexpected_labels

                report_unexpected_labels(self.name, path, np.unique(raw[outside]).tolist(), int(outside.sum()))
        return self.decode(raw)

    def read_image_at(self, index: int) -> np.ndarray:
        """The decoded RGB image of sample ``index`` (for `data check`)."""
        return self.read_image(self.samples[index][0])  # type: ignore[attr-defined]

    def read_raw_label_at(self, index: int) -> np.ndarray:
        """The stored values of sample ``index``'s label (for `data check`)."""
        return self.read_raw_label(self.samples[index][1])  # type: ignore[attr-defined]

    def load_label(self, index: int) -> np.ndarray | None:
        """Only the decoded label of sample ``index`` (for `data stats`)."""
        label_path = self.samples[index][1]  # type: ignore[attr-defined]
        return None if label_path is None else self.read_label(label_path)


# ---- atomic writes: segbench.io (imported above, re-exported for the dataset modules) --------

# ---- completion markers -------------------------------------------------------------------
def marker_path(root: Path, name: str) -> Path:
    return Path(root) / f"{MARKER_PREFIX}{name}.json"


def is_prepared(root: Path, name: str) -> bool:
    return marker_path(root, name).is_file()


def mark_prepared(root: Path, name: str, **info) -> Path:
    """Written last: its presence is the only proof a conversion finished."""
    return write_json(marker_path(root, name), {"dataset": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def build_dir_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp_dir)`` in a sibling temp folder, then swap it in for ``final``.

    An older ``final`` (from a run whose marker is missing, so not trusted) is replaced; a
    crash leaves only a ``.<name>.tmp-*`` folder, which never looks like a finished one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def progress(items: Iterable, total: int | None = None, desc: str = ""):
    """A tqdm bar on stderr (none when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="file", dynamic_ncols=True, mininterval=0.5,
                disable=None)  # None: no bar when stderr is not a terminal


# ---- foreign formats ----------------------------------------------------------------------
def read_sbd_mat(path: Path) -> np.ndarray:
    """Class map of one SBD ``cls/<id>.mat`` (MATLAB v5 struct ``GTcls``), H×W uint8 0..20.

    Same access as torchvision's ``SBDataset``: ``loadmat(f)['GTcls'][0]['Segmentation'][0]``.
    """
    from scipy.io import loadmat

    try:
        seg = loadmat(str(path))["GTcls"][0]["Segmentation"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise CorruptFileError(f"corrupt or unreadable file: {path} ({err})") from None
    return np.asarray(seg)


# ---- converters ---------------------------------------------------------------------------
def convert_label_images(pairs: Sequence[tuple[Path, Path]], lut: np.ndarray, desc: str) -> int:
    """Re-encode label PNGs through ``lut`` (Cityscapes labelIds → labelTrainIds); each
    output written under a temp name and renamed, so a present file is always complete."""
    for src, dst in progress(pairs, total=len(pairs), desc=desc):
        try:
            with Image.open(src) as img:
                raw = np.array(img)
        except (OSError, ValueError, SyntaxError) as err:
            raise CorruptFileError(f"corrupt or unreadable file: {src} ({err})") from None
        if raw.dtype != np.uint8:
            raw = np.clip(raw, 0, 255).astype(np.uint8)
        write_png(lut[raw], dst)
    return len(pairs)


# ---- `segbench data prepare`, one function per dataset ------------------------------------
STAMP = ".segbench-converted"  # inside every folder a converter built (vs. one the user unpacked)


def _ours(folder: Path) -> bool:
    return (folder / STAMP).is_file()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no extra disk space
    except OSError:
        shutil.copyfile(src, dst)


def _already(root: Path, name: str, force: bool) -> bool:
    if is_prepared(root, name) and not force:
        print(f"{name}: already prepared ({marker_path(root, name)}); prepare.force=true redoes it")
        return True
    return False


def prepare_voc_aug(root: Path, force: bool = False) -> dict | None:
    """SBD ``cls/*.mat`` → ``VOC2012/SegmentationClassAug/*.png`` + ``trainaug.txt`` / ``aug.txt``."""
    from segbench.data.voc import SBD_SOURCE, VOC_SOURCE, find_sbd, read_id_list, voc_base
    from segbench.errors import DatasetNotFoundError

    root = Path(root)
    if _already(root, "voc_aug", force):
        return None
    base = voc_base(root)
    lists = base / "ImageSets" / "Segmentation"
    for name in ("train.txt", "val.txt"):
        if not (lists / name).is_file():
            raise DatasetNotFoundError(f"voc_aug: VOC 2012 split list missing: {lists / name}\n"
                                       f"Expected data.root/VOCdevkit/VOC2012/ from {VOC_SOURCE}")
    voc_train, voc_val = read_id_list(lists / "train.txt"), read_id_list(lists / "val.txt")
    sbd, aug = find_sbd(root), base / "SegmentationClassAug"
    if sbd is None and not aug.is_dir():
        raise DatasetNotFoundError(f"voc_aug: SBD not found: {root / 'benchmark_RELEASE' / 'dataset' / 'cls'}\n"
                                   f"Get it from: {SBD_SOURCE}")
    if sbd is not None and (not aug.is_dir() or _ours(aug) or force):
        mats = sorted((sbd / "cls").glob("*.mat"))
        print(f"voc_aug: converting {len(mats)} SBD .mat files from {sbd / 'cls'} into {aug}")

        def build(tmp: Path) -> None:
            for mat in progress(mats, total=len(mats), desc="SBD .mat -> PNG"):
                Image.fromarray(read_sbd_mat(mat).astype(np.uint8)).save(tmp / f"{mat.stem}.png")
            (tmp / STAMP).write_text("SBD cls/*.mat converted by segbench data prepare\n")

        build_dir_atomically(aug, build)
    else:
        print(f"voc_aug: using the existing {aug} as is")
    if sbd is not None:
        sbd_ids = read_id_list(sbd / "train.txt") + read_id_list(sbd / "val.txt")
    else:
        sbd_ids = [p.stem for p in aug.glob("*.png")]
    trainaug = sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
    aug_only = sorted(set(sbd_ids) - set(voc_train) - set(voc_val))
    write_text(lists / "trainaug.txt", "\n".join(trainaug) + "\n")
    write_text(lists / "aug.txt", "\n".join(aug_only) + "\n")
    note = "" if len(trainaug) == 10582 else "; the official trainaug has 10582"
    print(f"voc_aug: wrote {lists / 'trainaug.txt'} ({len(trainaug)} ids{note}) and aug.txt ({len(aug_only)} ids)")
    mark_prepared(root, "voc_aug", trainaug=len(trainaug), aug=len(aug_only))
    return {"trainaug": len(trainaug), "aug": len(aug_only)}


def prepare_cityscapes(root: Path, force: bool = False) -> dict | None:
    """Every ``*_gt{Fine,Coarse}_labelIds.png`` → sibling ``*_labelTrainIds.png`` (as
    ``csCreateTrainIdLabelImgs`` writes them; identical to drawing the polygons with train ids,
    since json2labelImg draws both encodings from the same polygons and skips id -1)."""
    from segbench.data.cityscapes import Cityscapes, id_to_trainid_lut
    from segbench.errors import DatasetNotFoundError

    root = Path(root)
    if _already(root, "cityscapes", force):
        return None
    pairs = []
    for gt in ("gtFine", "gtCoarse"):
        for src in sorted((root / gt).glob(f"*/*/*_{gt}_labelIds.png")):
            pairs.append((src, src.with_name(src.name.replace("_labelIds.png", "_labelTrainIds.png"))))
    if not pairs:
        raise DatasetNotFoundError(f"cityscapes: no *_gtFine_labelIds.png under {root / 'gtFine'}\n"
                                   f"Expected layout:\n{Cityscapes.layout}\nGet the data from: {Cityscapes.source}")
    convert_label_images(pairs, id_to_trainid_lut(), desc="labelIds -> labelTrainIds")
    print(f"cityscapes: wrote {len(pairs)} *_labelTrainIds.png files")
    mark_prepared(root, "cityscapes", files=len(pairs))
    return {"files": len(pairs)}


def prepare_sunrgbd(root: Path, force: bool = False, depth: bool = False) -> dict | None:
    """Official ``SUNRGBD/`` + ``SUNRGBDtoolbox/`` → the extracted release layout (see
    :mod:`segbench.data.sunrgbd`). Nothing to do when that layout was unpacked directly."""
    from segbench.data.sunrgbd import LABEL_DIR, TEST_DIR, TRAIN_DIR, SUNRGBD
    from segbench.errors import DatasetNotFoundError

    root = Path(root)
    if _already(root, "sunrgbd", force):
        return None
    outputs = [root / d for d in (TRAIN_DIR, TEST_DIR, LABEL_DIR)]
    official = (root / "SUNRGBD").is_dir() and (root / "SUNRGBDtoolbox").is_dir()
    user_unpacked = all(p.is_dir() and not _ours(p) for p in outputs)
    if user_unpacked and not force:
        print(f"sunrgbd: nothing to prepare: {', '.join(p.name for p in outputs)} are already unpacked")
        return None
    if not official:
        raise DatasetNotFoundError(f"sunrgbd: neither the extracted layout nor SUNRGBD/ + SUNRGBDtoolbox/ under {root}\n"
                                   f"Expected layout:\n{SUNRGBD.layout}\nGet the data from: {SUNRGBD.source}")
    counts = convert_sunrgbd(root / "SUNRGBD", root / "SUNRGBDtoolbox", root, depth=depth)
    mark_prepared(root, "sunrgbd", **counts)
    return counts


def _scene_rel(path: str) -> str:
    """``/n/fs/sun3d/data/SUNRGBD/kv2/.../scene`` → ``kv2/.../scene`` (relative to SUNRGBD/)."""
    path = path.rstrip("/")
    marker = "/SUNRGBD/"
    return path.split(marker, 1)[1] if marker in path else path.lstrip("/")


def sunrgbd_depth_to_metres(raw: np.ndarray) -> np.ndarray:
    """Official SUN RGB-D depth PNG → metres: the toolbox's ``read3dPoints.m`` rotates the
    16 bits right by 3 (``bitor(bitshift(d,-3), bitshift(d,16-3))``) and divides by 1000."""
    raw = raw.astype(np.uint16)
    return ((raw >> 3) | (raw << 13)).astype(np.float32) / 1000.0


def convert_sunrgbd(sunrgbd_dir: Path, toolbox_dir: Path, out_root: Path, depth: bool = False,
                    label_offset: int = 5050) -> dict:
    """Build the release layout from the official zips (ESANet / RedNet's reading of them):

    * ``Metadata/SUNRGBDMeta.mat`` (frame order, ``rgbpath``/``rgbname``/``depthname``),
    * ``traintestSUNRGBD/allsplit.mat`` (``alltrain``: scene dirs of the 5,285 train frames),
    * ``Metadata/SUNRGBD2Dseg.mat`` (MATLAB v7.3 / HDF5; ``SUNRGBD2Dseg/seglabel`` holds one
      reference per frame to a W×H array of 37-class labels, 0 = void).

    Test frame k (1-based, in meta order) → ``img-k``; train frame k → image ``img-k``, label
    ``img-(k+5050)``, as in the release. Depth (optional) is written in the release's unit
    (metres x 10000, uint16), which saturates at 6.55 m.
    """
    import cv2
    import h5py
    from scipy.io import loadmat

    from segbench.data.sunrgbd import DEPTH_DIRS, LABEL_DIR, TEST_DIR, TRAIN_DIR
    from segbench.errors import DatasetNotFoundError

    files = {"meta": toolbox_dir / "Metadata" / "SUNRGBDMeta.mat",
             "split": toolbox_dir / "traintestSUNRGBD" / "allsplit.mat",
             "seg": toolbox_dir / "Metadata" / "SUNRGBD2Dseg.mat"}
    for path in files.values():
        if not path.is_file():
            raise DatasetNotFoundError(f"sunrgbd: toolbox file missing: {path} (unzip SUNRGBDtoolbox.zip into data.root)")
    meta = np.atleast_1d(loadmat(str(files["meta"]), squeeze_me=True, struct_as_record=False)["SUNRGBDMeta"])
    split = loadmat(str(files["split"]), squeeze_me=True, struct_as_record=False)
    train_scenes = {_scene_rel(str(p)) for p in np.atleast_1d(split["alltrain"])}
    frames: dict[str, list[tuple[int, Path, Path]]] = {"train": [], "test": []}
    for i, m in enumerate(meta):
        scene = _scene_rel("/".join(str(m.rgbpath).split("/")[:-2]))
        image = sunrgbd_dir / scene / "image" / str(m.rgbname)
        depth_png = sunrgbd_dir / scene / "depth_bfx" / str(m.depthname)
        frames["train" if scene in train_scenes else "test"].append((i, image, depth_png))
    if len(frames["test"]) > label_offset:
        raise CorruptFileError(f"{files['split']}: {len(frames['test'])} test frames, more than the "
                               f"release numbering allows ({label_offset})")
    print(f"sunrgbd: {len(frames['train'])} train and {len(frames['test'])} test frames "
          f"(official: 5285 / 5050) from {files['meta']}")
    missing = [str(img) for fr in frames.values() for _, img, _ in fr if not img.is_file()]
    if missing:
        raise DatasetNotFoundError(f"sunrgbd: {len(missing)} images listed in SUNRGBDMeta.mat are missing, "
                                   f"e.g. {missing[0]} (unzip SUNRGBD.zip into data.root)")

    def images(split_name: str):
        def build(tmp: Path) -> None:
            for k, (_, image, _) in enumerate(progress(frames[split_name], desc=f"{split_name} images"), 1):
                _link_or_copy(image, tmp / f"img-{k:06d}.jpg")
            (tmp / STAMP).write_text("built from SUNRGBD.zip by segbench data prepare\n")
        return build

    def labels(tmp: Path) -> None:
        with h5py.File(files["seg"], "r") as f:
            refs = np.asarray(f["SUNRGBD2Dseg"]["seglabel"]).ravel()
            if len(refs) != len(meta):
                raise CorruptFileError(f"{files['seg']}: {len(refs)} labels for {len(meta)} frames")
            for split_name, offset in (("test", 0), ("train", label_offset)):
                for k, (i, _, _) in enumerate(progress(frames[split_name], desc=f"{split_name} labels"), 1):
                    label = np.asarray(f[refs[i]]).T  # MATLAB column-major: stored W×H
                    Image.fromarray(label.astype(np.uint8)).save(tmp / f"img-{k + offset:06d}.png")
        (tmp / STAMP).write_text("built from SUNRGBD2Dseg.mat by segbench data prepare\n")

    def depths(split_name: str):
        def build(tmp: Path) -> None:
            for k, (_, _, depth_png) in enumerate(progress(frames[split_name], desc=f"{split_name} depth"), 1):
                raw = cv2.imread(str(depth_png), cv2.IMREAD_UNCHANGED)
                if raw is None:
                    raise CorruptFileError(f"corrupt or unreadable file: {depth_png}")
                out = np.clip(sunrgbd_depth_to_metres(raw) * 10000.0, 0, 65535).astype(np.uint16)
                cv2.imwrite(str(tmp / f"img-{k:06d}.png"), out)
            (tmp / STAMP).write_text("built from SUNRGBD.zip depth_bfx by segbench data prepare\n")
        return build

    build_dir_atomically(out_root / LABEL_DIR, labels)
    build_dir_atomically(out_root / TRAIN_DIR, images("train"))
    build_dir_atomically(out_root / TEST_DIR, images("test"))
    if depth:
        for split_name in ("train", "test"):
            build_dir_atomically(out_root / DEPTH_DIRS[split_name], depths(split_name))
    return {"train": len(frames["train"]), "test": len(frames["test"])}


PREPARERS: dict[str, Callable[..., dict | None]] = {
    "voc_aug": prepare_voc_aug,
    "cityscapes": prepare_cityscapes,
    "sunrgbd": prepare_sunrgbd,
}
