"""``segbench data prepare data=sunrgbd``: the official ``SUNRGBD/`` + ``SUNRGBDtoolbox/``
→ the extracted 37-class release layout :mod:`segbench.data.sunrgbd` reads (also run on other
folders by ``scripts/convert_sunrgbd.py``). Idempotent and atomic (:mod:`segbench.data.conversion`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
from PIL import Image
from scipy.io import loadmat

from segbench.data.conversion import (
    STAMP,
    already_prepared,
    build_dir_atomically,
    built_by_us,
    link_or_copy,
    mark_prepared,
    progress,
)
from segbench.data.sunrgbd import DEPTH_DIRS, LABEL_DIR, SUNRGBD, TEST_DIR, TRAIN_DIR
from segbench.errors import CorruptFileError, DatasetNotFoundError


def prepare_sunrgbd(root: Path, force: bool = False, depth: bool = False) -> dict | None:
    """Official ``SUNRGBD/`` + ``SUNRGBDtoolbox/`` → the extracted release layout (see
    :mod:`segbench.data.sunrgbd`). Nothing to do when that layout was unpacked directly."""
    root = Path(root)
    if already_prepared(root, "sunrgbd", force):
        return None
    outputs = [root / d for d in (TRAIN_DIR, TEST_DIR, LABEL_DIR)]
    official = (root / "SUNRGBD").is_dir() and (root / "SUNRGBDtoolbox").is_dir()
    user_unpacked = all(p.is_dir() and not built_by_us(p) for p in outputs)
    if user_unpacked and not force:
        print(f"sunrgbd: nothing to prepare: {', '.join(p.name for p in outputs)} are already unpacked")
        return None
    if not official:
        raise DatasetNotFoundError(f"sunrgbd: neither the extracted layout nor SUNRGBD/ + SUNRGBDtoolbox/ under {root}\n"
                                   f"Expected layout:\n{SUNRGBD.layout}\nGet the data from: {SUNRGBD.source}")
    counts = convert_sunrgbd(root / "SUNRGBD", root / "SUNRGBDtoolbox", root, depth=depth)
    mark_prepared(root, "sunrgbd", **counts)
    return counts


def scene_rel(path: str) -> str:
    """``/n/fs/sun3d/data/SUNRGBD/kv2/.../scene`` → ``kv2/.../scene`` (relative to SUNRGBD/)."""
    path = path.rstrip("/")
    marker = "/SUNRGBD/"
    return path.split(marker, 1)[1] if marker in path else path.lstrip("/")


def sunrgbd_depth_to_metres(raw: np.ndarray) -> np.ndarray:
    """Official SUN RGB-D depth PNG → metres: the toolbox's ``read3dPoints.m`` rotates the
    16 bits right by 3 (``bitor(bitshift(d,-3), bitshift(d,16-3))``) and divides by 1000."""
    raw = raw.astype(np.uint16)
    return ((raw >> 3) | (raw << 13)).astype(np.float32) / 1000.0


Frames = dict[str, list[tuple[int, Path, Path]]]  # split → (index in SUNRGBDMeta, image, depth PNG)


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
    files = {"meta": toolbox_dir / "Metadata" / "SUNRGBDMeta.mat",
             "split": toolbox_dir / "traintestSUNRGBD" / "allsplit.mat",
             "seg": toolbox_dir / "Metadata" / "SUNRGBD2Dseg.mat"}
    for path in files.values():
        if not path.is_file():
            raise DatasetNotFoundError(f"sunrgbd: toolbox file missing: {path} (unzip SUNRGBDtoolbox.zip into data.root)")
    num_frames, frames = read_frames(sunrgbd_dir, files["meta"], files["split"])
    if len(frames["test"]) > label_offset:
        raise CorruptFileError(f"{files['split']}: {len(frames['test'])} test frames, more than the "
                               f"release numbering allows ({label_offset})")
    print(f"sunrgbd: {len(frames['train'])} train and {len(frames['test'])} test frames "
          f"(official: 5285 / 5050) from {files['meta']}")
    missing = [str(img) for fr in frames.values() for _, img, _ in fr if not img.is_file()]
    if missing:
        raise DatasetNotFoundError(f"sunrgbd: {len(missing)} images listed in SUNRGBDMeta.mat are missing, "
                                   f"e.g. {missing[0]} (unzip SUNRGBD.zip into data.root)")

    build_dir_atomically(out_root / LABEL_DIR, labels_from(files["seg"], num_frames, frames, label_offset))
    build_dir_atomically(out_root / TRAIN_DIR, images_from(frames["train"], "train"))
    build_dir_atomically(out_root / TEST_DIR, images_from(frames["test"], "test"))
    if depth:
        for split_name in ("train", "test"):
            build_dir_atomically(out_root / DEPTH_DIRS[split_name], depths_from(frames[split_name], split_name))
    return {"train": len(frames["train"]), "test": len(frames["test"])}


def read_frames(sunrgbd_dir: Path, meta_file: Path, split_file: Path) -> tuple[int, Frames]:
    """Every frame of ``SUNRGBDMeta.mat`` in its order, as train (its scene is in
    ``allsplit.mat``'s ``alltrain``) or test; and the number of frames."""
    meta = np.atleast_1d(loadmat(str(meta_file), squeeze_me=True, struct_as_record=False)["SUNRGBDMeta"])
    split = loadmat(str(split_file), squeeze_me=True, struct_as_record=False)
    train_scenes = {scene_rel(str(p)) for p in np.atleast_1d(split["alltrain"])}
    frames: Frames = {"train": [], "test": []}
    for i, m in enumerate(meta):
        scene = scene_rel("/".join(str(m.rgbpath).split("/")[:-2]))
        image = sunrgbd_dir / scene / "image" / str(m.rgbname)
        depth_png = sunrgbd_dir / scene / "depth_bfx" / str(m.depthname)
        frames["train" if scene in train_scenes else "test"].append((i, image, depth_png))
    return len(meta), frames


def images_from(frames: list[tuple[int, Path, Path]], split_name: str):
    """A folder builder: frame k's image as ``img-k.jpg`` (hard-linked where possible)."""
    def build(tmp: Path) -> None:
        for k, (_, image, _) in enumerate(progress(frames, desc=f"{split_name} images"), 1):
            link_or_copy(image, tmp / f"img-{k:06d}.jpg")
        (tmp / STAMP).write_text("built from SUNRGBD.zip by segbench data prepare\n")
    return build


def labels_from(seg_file: Path, num_frames: int, frames: Frames, label_offset: int):
    """A folder builder: test frame k's label as ``img-k.png``, train frame k's as
    ``img-(k + label_offset).png``, read one frame at a time from the HDF5 file."""
    def build(tmp: Path) -> None:
        with h5py.File(seg_file, "r") as f:
            refs = np.asarray(f["SUNRGBD2Dseg"]["seglabel"]).ravel()
            if len(refs) != num_frames:
                raise CorruptFileError(f"{seg_file}: {len(refs)} labels for {num_frames} frames")
            for split_name, offset in (("test", 0), ("train", label_offset)):
                for k, (i, _, _) in enumerate(progress(frames[split_name], desc=f"{split_name} labels"), 1):
                    label = np.asarray(f[refs[i]]).T  # MATLAB column-major: stored W×H
                    Image.fromarray(label.astype(np.uint8)).save(tmp / f"img-{k + offset:06d}.png")
        (tmp / STAMP).write_text("built from SUNRGBD2Dseg.mat by segbench data prepare\n")
    return build


def depths_from(frames: list[tuple[int, Path, Path]], split_name: str):
    """A folder builder: frame k's ``depth_bfx`` PNG in the release's unit as ``img-k.png``."""
    def build(tmp: Path) -> None:
        for k, (_, _, depth_png) in enumerate(progress(frames, desc=f"{split_name} depth"), 1):
            raw = cv2.imread(str(depth_png), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise CorruptFileError(f"corrupt or unreadable file: {depth_png}")
            out = np.clip(sunrgbd_depth_to_metres(raw) * 10000.0, 0, 65535).astype(np.uint16)
            cv2.imwrite(str(tmp / f"img-{k:06d}.png"), out)
        (tmp / STAMP).write_text("built from SUNRGBD.zip depth_bfx by segbench data prepare\n")
    return build
