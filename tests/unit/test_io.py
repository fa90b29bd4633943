"""segbench.io: the one home of atomic writes; a failed write leaves the old file intact."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench import io
from segbench.data import prepare_cityscapes
from segbench.data.cityscapes import CODEC
from segbench.engine import checkpoint


def crash_after_half(write):
    """A writer that leaves half a file at its destination, then fails like a full disk."""
    def crashing(*args, **kwargs):
        write(*args, **kwargs)
        raise OSError("disk full")
    return crashing


def half_torch_save(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")


def half_png(image, fp, *args, **kwargs):
    Path(fp).write_bytes(b"\x89PNG half an image")


def test_checkpoints_and_prepared_labels_survive_a_crash_mid_write(tmp_path, monkeypatch):
    """The layers that write big files (engine: checkpoints, data: converted labels) go through
    the atomic write: a crash while writing keeps the previous file whole and leaves no
    temporary beside it (a direct torch.save / Image.save to the target would leave half a file)."""
    ckpt = tmp_path / "run" / "last.pt"
    checkpoint.save_checkpoint(ckpt, {"model": {}, "iteration": 1})
    src, dst = tmp_path / "labels" / "a_labelIds.png", tmp_path / "labels" / "a_labelTrainIds.png"
    io.write_png(np.full((4, 6), 7, np.uint8), src)  # label id 7 = road = train id 0
    prepare_cityscapes.convert_label_images([(src, dst)], CODEC, desc="test")
    before = dst.read_bytes()

    monkeypatch.setattr(torch, "save", crash_after_half(half_torch_save))
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(ckpt, {"model": {}, "iteration": 2})
    monkeypatch.setattr(Image.Image, "save", crash_after_half(half_png))
    with pytest.raises(OSError, match="disk full"):
        prepare_cityscapes.convert_label_images([(src, dst)], CODEC, desc="test")
    monkeypatch.undo()

    assert checkpoint.load_checkpoint(ckpt)["iteration"] == 1
    assert dst.read_bytes() == before and not np.asarray(Image.open(dst)).any()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]
    assert sorted(p.name for p in dst.parent.iterdir()) == [src.name, dst.name]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = io.write_json(tmp_path / "record.json", {"mIoU": 0.5})

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"mIoU": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
    assert io.read_json(tmp_path / "missing.json") == {}


def test_png_round_trip_with_palette(tmp_path):
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    palette = np.random.default_rng(0).integers(0, 255, (256, 3))
    path = io.write_png(labels, tmp_path / "sub" / "x.png", palette=palette)
    with Image.open(path) as img:
        assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
