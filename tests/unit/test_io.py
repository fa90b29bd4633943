"""segbench.io: the one home of atomic writes; a failed write leaves the old file intact."""
import json

import numpy as np
import pytest
from PIL import Image

from segbench import io
from segbench.data import prepare_cityscapes, synthetic
from segbench.engine import checkpoint


def test_every_layer_uses_the_same_helpers():
    assert checkpoint.atomic_write is io.atomic_write
    assert prepare_cityscapes.write_png is io.write_png and synthetic.write_json is io.write_json


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
