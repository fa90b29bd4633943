"""Files from someone else never run code or write outside their folder (issue 15), in process:
data-only checkpoints, the `_target_` allowlist, confined output names, list files."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segbench.api import available
from segbench.engine.checkpoint import CheckpointError, UntrustedCheckpointError, load_checkpoint, save_checkpoint
from segbench.trust import (UnsafePathError, UntrustedConfigError, check_config, confined_path, conf_targets,
                            is_allowed_target, list_file_entries)
from tests.conftest import compose_train, compose


def compose_eval(overrides):
    """The config `segbench eval <overrides>` runs with."""
    import segbench.cli  # noqa: F401 -- registers eval's resolvers

    return compose("eval", overrides)


class Payload:
    """What a malicious pickle carries: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_with_payload(path: Path, marker: Path) -> Path:
    torch.save({"model": {}, "config": {}, "x": Payload(marker)}, path)
    return path


# ---- checkpoints ------------------------------------------------------------------------------
def test_pickle_that_needs_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    path = pickle_with_payload(tmp_path / "best.pt", marker)
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert not marker.exists()
    assert message.startswith(f"not a segbench checkpoint: {path} (") and "\n" not in message
    assert "trust_checkpoint=true" in message and "runs code from the file" in message
    load_checkpoint(path, trust=True)  # the escape hatch really opens it (and runs it)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", os.urandom(64), b"PK\x03\x04 half a zip"], ids=["empty", "random", "truncated"])
def test_unreadable_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not isinstance(err.value, UntrustedCheckpointError)
    assert str(err.value).startswith(f"not a segbench checkpoint: {path} (") and "\n" not in str(err.value)


def test_truncated_real_checkpoint_and_foreign_dict(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(4096)}})
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"not a segbench checkpoint: .*last\.pt \("):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"\(no 'model' entry\)"):
        load_checkpoint(tmp_path / "foreign.pt")


# ---- the _target_ allowlist -------------------------------------------------------------------
def test_allowlist_comes_from_the_conf_tree():
    targets = conf_targets()
    assert {"segbench.models.unet.UNet", "torch.optim.SGD", "segbench.engine.schedule.poly"} <= targets
    assert not any(t.startswith(("os.", "builtins.", "subprocess.")) for t in targets)


@pytest.mark.parametrize("target", [
    "os.system", "torch.save", "builtins.exec", "subprocess.run",
    "segbench.io.write_json",  # under segbench., but writes any file: not a model class
    "segbench.cli.main",
    "segbench.models.fcn.os.system",  # a module attribute chain that resolves to os.system
    "segbench.models.nothere.Net",
    "segbench.__main__.X",  # importing it would run the CLI: never imported to check
    "segbench.engine.trainer.Trainer",  # a segbench class outside models/ (trains into any run_dir)
])
def test_targets_outside_the_tree_are_refused(target):
    assert not is_allowed_target(target)


def test_a_segbench_model_class_without_yaml_is_allowed():
    # a new nn.Module in segbench/models is usable from the command line before its YAML exists
    assert is_allowed_target("segbench.models.deeplabv3.ASPP")


def test_every_shipped_config_passes():
    # the group files are where the allowlist comes from; composed recipes (with their
    # interpolations resolved) are what could differ
    for name in available("experiment"):
        check_config(compose("train", [f"experiment={name}"]), name)
    for name in available("postprocess"):
        check_config(compose("eval", [f"postprocess={name}"]), f"postprocess={name}")
    for verb in ("eval", "sweep", "bench", "report", "datatool"):
        check_config(compose(verb), verb)


def test_command_line_target_is_refused_with_key_path_and_value():
    cfg = compose_train(["model._target_=os.system"])
    with pytest.raises(UntrustedConfigError, match=r"model\._target_='os\.system'") as err:
        check_config(cfg, "the command line")
    assert "the command line" in str(err.value) and "\n" not in str(err.value)


def test_saved_config_targets_are_checked_everywhere_and_through_interpolations(tmp_path):
    saved = {"model": {"_target_": "segbench.models.unet.UNet"},
             "loss": {"_target_": "segbench.engine.losses.SegmentationLoss",
                      "weight": {"_target_": "torch.save", "_args_": [{}, str(tmp_path / "m")]}}}
    with pytest.raises(UntrustedConfigError, match=r"loss\.weight\._target_='torch\.save'"):
        check_config(saved, "best.pt")
    listed = {"a": {"_args_": [1, {"_target_": "os.system"}]}}
    with pytest.raises(UntrustedConfigError, match=r"a\._args_\[1\]\._target_='os\.system'"):
        check_config(OmegaConf.create(listed), "x")
    hidden = OmegaConf.create({"name": "os.system", "model": {"_target_": "${name}"}})
    with pytest.raises(UntrustedConfigError, match="'os.system'"):
        check_config(hidden, "x")
    made = OmegaConf.create({"model": "${oc.create:{_target_: os.system, _args_: [true]}}"})
    with pytest.raises(UntrustedConfigError, match=r"model\._target_='os\.system'"):
        check_config(made, "x")


def test_train_resume_refuses_a_pickle_payload(tiny_cfg, tmp_path):
    """`segbench train trainer.resume=<dir>` with a payload as <dir>/last.pt (the CLI's one-line
    exit for this error is shown for eval in tests/integration/test_security_cli.py)."""
    from segbench.engine.trainer import Trainer

    run, marker = tmp_path / "theirs", tmp_path / "pwned"
    run.mkdir()
    pickle_with_payload(run / "last.pt", marker)
    with pytest.raises(UntrustedCheckpointError, match=r"last\.pt .*trust_checkpoint=true"):
        Trainer(tiny_cfg(f"trainer.resume={run}"), tmp_path / "mine")
    assert not marker.exists()


def test_eval_checks_the_saved_config_before_instantiating(tmp_path):
    """A data-only checkpoint whose saved config says torch.save / os.system: refused, nothing written."""
    from segbench.app import evaluate as evaluator

    marker = tmp_path / "written_by_config"
    for bad in ({"_target_": "torch.save", "_args_": [{}, str(marker)]},
                {"_target_": "os.system", "_args_": [f"touch {marker}"]}):
        config = OmegaConf.to_container(compose_train(["run_dir=x"]), resolve=True)
        config["model"] = bad
        save_checkpoint(tmp_path / "best.pt", {"model": {}, "config": config})
        eval_cfg = compose_eval([f"ckpt={tmp_path / 'best.pt'}", "device=cpu"])
        with pytest.raises(UntrustedConfigError, match=r"model\._target_='(torch\.save|os\.system)'"):
            evaluator.run(eval_cfg)
        assert not marker.exists()


# ---- output paths and list files -----------------------------------------------------------
@pytest.mark.parametrize("name", ["../x.png", "../../x.png", "a/../../x.png", "/tmp/x.png", "", ".", ".."])
def test_confined_path_refuses_names_leaving_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match="outside"):
        confined_path(tmp_path / "out", name, source="val.txt line 3")


def test_confined_path_accepts_inside_names_and_refuses_symlink_escapes(tmp_path):
    out = tmp_path / "out"
    assert confined_path(out, "a.png") == out / "a.png"
    assert confined_path(out, "sub/../b.png") == out / "sub/../b.png"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="from archive.tar"):
        confined_path(out, "link/evil.png", source="archive.tar")


def test_list_file_with_dotdot_id_names_file_and_line(tmp_path):
    lst = tmp_path / "val.txt"
    lst.write_text("2007_000033\n\n../../escape\n")
    with pytest.raises(UnsafePathError, match=rf"{lst} line 3: '../../escape'"):
        list_file_entries(lst)
    lst.write_text("/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n")  # DeepLab style
    assert list_file_entries(lst) == [(1, ["/JPEGImages/2007_000033.jpg", "/SegmentationClassAug/2007_000033.png"])]


def test_camvid_list_with_dotdot_is_refused(tmp_path):
    from segbench.data.camvid import CamVid
    from tests.fixtures.datasets import make_camvid

    root = make_camvid(tmp_path / "camvid")
    base = root / "CamVid" if (root / "CamVid").is_dir() else root
    lines = (base / "val.txt").read_text().splitlines()
    lines[0] = "/SegNet/CamVid/../../../etc/x.png /SegNet/CamVid/valannot/x.png"
    (base / "val.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(UnsafePathError, match=r"val\.txt line 1"):
        CamVid(root, "val")


def test_prediction_writer_keeps_files_inside_its_folder(tmp_path):
    from segbench.engine.evaluator import PredictionWriter

    class Stub:
        def colorize(self, label):
            return np.stack([label] * 3, -1)

    out = tmp_path / "predictions" / "val"
    writer = PredictionWriter(Stub(), out, "color", num_panels=0)
    batch = {"id": ["ok", "../../../escaped"], "image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4)}
    with pytest.raises(UnsafePathError, match="'../../../escaped'"):
        writer(batch, torch.zeros(2, 4, 4, dtype=torch.long))
    assert (out / "ok.png").is_file()
    assert not list(tmp_path.glob("escaped*")) and not list(tmp_path.parent.glob("escaped*"))


def test_instantiate_backstop_names_the_full_key(tmp_path):
    """Every config built through segbench.api.instantiate_unwrapped (model, data, transforms,
    post-processing; also `segbench predict`) passes the same check, whoever calls it."""
    from segbench.api import instantiate_unwrapped

    marker = tmp_path / "m"
    cfg = OmegaConf.create({"model": {"_target_": "torch.save", "_args_": [{}, str(marker)]}})
    with pytest.raises(UntrustedConfigError, match=r"model\._target_='torch\.save'"):
        instantiate_unwrapped(cfg.model)
    assert not marker.exists()


def test_predict_checks_the_saved_config_before_importing_anything(tmp_path):
    """`segbench predict` rebuilds model, pipeline and label codec from the checkpoint's config."""
    from segbench.app import predict

    config = OmegaConf.to_container(compose_train(["run_dir=x"]), resolve=True)
    config["data"]["dataset"]["_target_"] = "subprocess.Popen"
    save_checkpoint(tmp_path / "best.pt", {"model": {}, "config": config})
    cfg = compose("predict", [f"ckpt={tmp_path / 'best.pt'}", f"input={tmp_path}"])
    with pytest.raises(UntrustedConfigError, match=r"data\.dataset\._target_='subprocess\.Popen'"):
        predict.Predictor(cfg)


@pytest.mark.parametrize("schedule", ["poly", "step"])
def test_schedule_state_is_plain_data(tmp_path, schedule):
    """LambdaLR saves its factor object's __dict__ (numbers), never the object: weights_only opens it.
    (That a whole checkpoint written by training loads data-only and resumes bit-exact is
    tests/unit/test_trainer.py::test_resume_continues_exactly, through load_checkpoint.)"""
    from segbench.engine import schedule as schedules

    def make(**kw):
        return getattr(schedules, schedule)(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), **kw)

    saved = make(max_iters=10)
    for _ in range(3):
        saved.optimizer.step()
        saved.step()
    torch.save(saved.state_dict(), tmp_path / "s.pt")
    fresh = make(max_iters=99)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert fresh.last_epoch == 3 and fresh.lr_lambdas[0](7) == saved.lr_lambdas[0](7)


def test_trust_checkpoint_reaches_the_loader(tmp_path, tiny_cfg, monkeypatch):
    """`segbench eval ... trust_checkpoint=true` and `trainer.trust_checkpoint=true` are the only
    ways to open a pickle that needs code; both default to data only."""
    from segbench.app import evaluate as evaluator
    from segbench.app import loaded
    from segbench.engine import trainer

    seen = []

    def loader(path, trust=False, **kw):
        seen.append(trust)
        raise CheckpointError("stop here")

    monkeypatch.setattr(loaded, "load_checkpoint", loader)
    monkeypatch.setattr(trainer, "load_checkpoint", loader)
    save_checkpoint(tmp_path / "best.pt", {"model": {}})
    for flag in ("false", "true"):
        with pytest.raises(CheckpointError, match="stop here"):
            evaluator.run(compose_eval([f"ckpt={tmp_path / 'best.pt'}", f"trust_checkpoint={flag}"]))
    # the default resume is test_train_resume_refuses_a_pickle_payload
    with pytest.raises(CheckpointError, match="stop here"):
        trainer.Trainer(tiny_cfg(f"trainer.resume={tmp_path / 'best.pt'}", "trainer.trust_checkpoint=true"),
                        tmp_path / "run")
    assert seen == [False, True, True]
