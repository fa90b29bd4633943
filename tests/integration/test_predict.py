"""`segbench predict`: a tiny run on synthetic data (CI) and on real CamVid (when present)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segbench.app import evaluate as eval_app
from segbench.app import predict
from segbench.engine import build
from segbench.engine.checkpoint import load_checkpoint, save_checkpoint
from segbench.errors import CheckpointError, SegbenchError
from tests.conftest import TINY_SYNTHETIC, compose_train, compose

pytestmark = pytest.mark.slow

CAMVID = Path(os.environ.get("SEGBENCH_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "camvid"


def predict_cfg(*overrides: str):
    return compose("predict", ["progress=false", *overrides])


def train(run_dir: Path, *overrides: str) -> Path:
    """Train in this process (the CLI's start-up would double the cost): checkpoints carry the config."""
    from segbench.engine.trainer import Trainer

    cfg = compose_train(["model.base_channels=4", "trainer.progress=false", "data.num_workers=0", *overrides])
    Trainer(cfg, run_dir).fit()
    assert (run_dir / "best.pt").is_file() or (run_dir / "last.pt").is_file()
    return run_dir


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, synthetic_root) -> Path:
    run = tmp_path_factory.mktemp("predict") / "run"
    return train(run, *TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=2", "trainer.val_interval=2")


def test_predict_any_size_writes_label_color_overlay_and_one_legend(synthetic_run, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"odd.png": (37, 45), "tall.jpg": (70, 33), "odd2.png": (37, 45)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = predict.run(predict_cfg(f"run={synthetic_run}", f"input={images}", f"output={out}", "batch_size=2"))
    assert result["skipped"] == [str(images / "broken.png")] and len(result["written"]) == 3
    printed = capsys.readouterr()
    assert "broken.png" in printed.out + printed.err and "skipped 1 unreadable image(s)" in printed.out
    for name, (h, w) in sizes.items():
        stem = Path(name).stem
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (w, h)  # synthetic = VOC layout: palette indices
        assert set(np.unique(np.array(label))) <= set(range(6))
        for suffix in ("_color", "_overlay"):
            assert Image.open(out / f"{stem}{suffix}.png").size == (w, h)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["legend.png"] + [f"{Path(n).stem}{s}.png" for n in sizes for s in ("", "_color", "_overlay")])


def test_predict_glob_and_protocol_override(synthetic_run, synthetic_root, tmp_path):
    out = tmp_path / "out"
    result = predict.run(predict_cfg(f"run={synthetic_run}", f"input={synthetic_root}/JPEGImages/*0.jpg",
                                     f"output={out}", "protocol.flip=true", "protocol.scales=[0.75,1.0]"))
    assert result["written"] and len(list(out.glob("*_overlay.png"))) == len(result["written"])


@pytest.fixture
def bf16_checkpoint(synthetic_run, tmp_path) -> Path:
    """The synthetic run's checkpoint as a run trained where ``auto`` meant bf16 + channels_last
    (an AMX CPU, a GPU) records it: its config says ``trainer.precision=auto``, its ``speed`` what
    that resolved to. This suite's CPU resolves ``auto`` to fp32 and NCHW."""
    state = load_checkpoint(synthetic_run / "best.pt")
    assert state["config"]["trainer"]["precision"] == "auto"
    state["speed"] = {"precision": "bf16", "channels_last": True}
    run = tmp_path / "bf16_run"
    run.mkdir()
    save_checkpoint(run / "best.pt", state)
    return run


def forward_settings(monkeypatch) -> list:
    """(autocast dtype or None, input in channels_last, weights in channels_last) of every forward
    of the models the verbs build from now on."""
    seen, build_model = [], build.build_model

    def watched(cfg):
        model = build_model(cfg)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

        def record(module, args):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen.append((dtype, args[0].is_contiguous(memory_format=torch.channels_last),
                         conv.weight.is_contiguous(memory_format=torch.channels_last)))
        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(build, "build_model", watched)
    return seen


def val_images(synthetic_root: Path, folder: Path) -> list[str]:
    """The synthetic val split's images linked into ``folder``: their stems, in split order."""
    ids = (synthetic_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    folder.mkdir()
    for i in ids:
        (folder / f"{i}.jpg").symlink_to(synthetic_root / "JPEGImages" / f"{i}.jpg")
    return ids


def test_eval_and_predict_of_one_checkpoint_predict_alike(bf16_checkpoint, synthetic_root, tmp_path, monkeypatch):
    """One loader, one per-batch path: `segbench eval save_predictions=labelIds` and `segbench
    predict` of the same checkpoint write the same label PNGs for the val images, and both run the
    checkpoint in the precision and memory format its training recorded (bf16, channels_last),
    not in what the config's `auto` means on this CPU (fp32, NCHW)."""
    seen = forward_settings(monkeypatch)
    eval_app.run(compose("eval", [f"run={bf16_checkpoint}", "device=cpu", "progress=false",
                                  "save_predictions=labelIds", f"output={tmp_path / 'scores.json'}"]))
    by_eval, seen_by_eval = bf16_checkpoint / "predictions" / "val", list(seen)
    seen.clear()
    ids = val_images(synthetic_root, tmp_path / "in")
    out = tmp_path / "out"
    predict.run(predict_cfg(f"run={bf16_checkpoint}", f"input={tmp_path / 'in'}", f"output={out}", "device=cpu"))
    assert set(seen_by_eval) == set(seen) == {(torch.bfloat16, True, True)}
    labels = []
    for i in ids:
        from_eval, from_predict = np.array(Image.open(by_eval / f"{i}.png")), np.array(Image.open(out / f"{i}.png"))
        assert from_eval.shape == (32, 32) and np.array_equal(from_eval, from_predict), i
        labels.append(from_predict)
    assert len(np.unique(np.stack(labels))) > 1  # the comparison has content: more than one class predicted


def test_predict_takes_precision_and_channels_last_as_eval_does(bf16_checkpoint, tmp_path, synthetic_root,
                                                               monkeypatch):
    """`precision=` / `channels_last=` override the recorded settings in both verbs alike; a
    `trainer.*` override, which neither reads, is refused."""
    seen = forward_settings(monkeypatch)
    val_images(synthetic_root, tmp_path / "in")
    predict.run(predict_cfg(f"run={bf16_checkpoint}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                            "device=cpu", "precision=fp32", "channels_last=false"))
    assert set(seen) == {(None, False, False)}
    with pytest.raises(SegbenchError, match=r"trainer.precision=fp32 \(only training reads it: predict has "
                                            r"precision= and channels_last=\)"):
        predict.run(predict_cfg(f"run={bf16_checkpoint}", f"input={tmp_path / 'in'}",
                                'overrides=["trainer.precision=fp32"]'))


def test_checkpoint_without_config_is_one_message(tmp_path, synthetic_root):
    ckpt = tmp_path / "foreign.pt"
    torch.save({"model": {}}, ckpt)
    with pytest.raises(CheckpointError, match="holds no config"):
        predict.run(predict_cfg(f"ckpt={ckpt}", f"input={synthetic_root}/JPEGImages"))
    with pytest.raises(SegbenchError, match="no images found"):
        predict.run(predict_cfg(f"ckpt={ckpt}", f"input={tmp_path}/nothing/*.png"))


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory) -> Path:
    """A few iterations on real CamVid images: a read-only subset linked into a tmp root (4 train,
    2 val), so training and its validation take seconds."""
    if not (CAMVID / "test").is_dir():
        pytest.skip(f"real CamVid not present at {CAMVID}")
    base = tmp_path_factory.mktemp("camvid") / "CamVid"
    for split, n in (("train", 4), ("val", 2)):
        for folder in (split, f"{split}annot"):
            (base / folder).mkdir(parents=True)
            for src in sorted((CAMVID / folder).glob("*.png"))[:n]:
                (base / folder / src.name).symlink_to(src)
    return train(base.parent / "run", "data=camvid", f"data.root={base}", "model=unet_small",
                 "data.transforms.train.crop_size=[64,64]", "data.batch_size=2", "trainer.max_iters=3",
                 "trainer.val_interval=3")


def test_predict_on_real_camvid_test_images(camvid_run, tmp_path):
    from segbench.data.camvid import CamVid

    pattern = f"{CAMVID}/test/0001TP_0085*.png"  # two of the 233 test frames, via a glob
    out = tmp_path / "pred"
    result = predict.run(predict_cfg(f"run={camvid_run}", f"input={pattern}", f"output={out}"))
    assert len(result["written"]) == len(glob.glob(pattern)) >= 1 and not result["skipped"]
    # read the predictions back with the CamVid reader: predictions as testannot/ beside the real images
    root = tmp_path / "readback" / "CamVid"
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    for written in map(Path, result["written"]):
        (root / "test" / written.name).symlink_to(written)
        (root / "testannot" / written.name).symlink_to(out / written.name)
        image = Image.open(written)
        for suffix in ("", "_color", "_overlay"):
            assert Image.open(out / f"{written.stem}{suffix}.png").size == image.size
    ds = CamVid(root.parent, "test")
    assert len(ds) == len(result["written"])
    for i in range(len(ds)):
        image, label = ds.load(i)
        assert label.shape == image.shape[:2] and label.max() < 11
        assert not ds.unexpected_values(ds.read_raw_label_at(i))
    assert (out / "legend.png").is_file()
