"""`segbench <verb> --help` explains: the groups with their options and what the current one
is, the main keys with their composed values and the one-line description their config file
gives them (the trailing `# ...` comment), not the raw composed config."""
from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra

from segbench import cli
from segbench.app import help as verb_help_module
from segbench.app import configs
from segbench.app.help import declared_keys, header, verb_help


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def help_text(verb: str, *args: str) -> str:
    return verb_help(verb, cli.VERBS[verb], list(args))


def key_line(text: str, key: str) -> str:
    """The line of `text` that lists `key=` with the description's continuation lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}="))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * verb_help_module.KEY_COLUMN):
        end += 1
    return " ".join(" ".join(lines[start:end]).split())


def test_the_parser_reads_trailing_comments_continuations_and_quotes(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "# header sentence one. Second sentence.\n"
        "defaults:\n  - base   # not a key\n  - _self_\n\n"
        "lr: 0.1            # learning rate\n"
        "                   # continued here\n"
        "# a block comment, not a continuation\n"
        "tag: 'a # b'       # quoted hash\n"
        "section:           # what the section is\n"
        "  inner: [1, 2]    # an inner key\n"
        "  bare: 3\n"
        "after: x\n")
    keys = {k.path: k for k in declared_keys(path, "grp")}
    assert list(keys) == ["grp.lr", "grp.tag", "grp.section", "grp.section.inner", "grp.section.bare", "grp.after"]
    assert keys["grp.lr"].description == "learning rate continued here"
    assert keys["grp.tag"].description == "quoted hash"
    assert not keys["grp.section"].leaf and keys["grp.section"].description == "what the section is"
    assert keys["grp.section.inner"].depth == 2 and keys["grp.section.bare"].description == ""
    assert header(path) == "header sentence one."


def test_train_help_lists_groups_and_described_keys_not_the_raw_config():
    text = help_text("train")
    assert "model: deeplabv1," in text and "unet_small (current)" in text
    assert header(configs.CONF_DIR / "model" / "unet_small.yaml") in " ".join(text.split())
    assert "_target_" not in text and "== Config ==" not in text
    # every key the trainer's file describes is listed with its value and its own comment
    for key in declared_keys(configs.CONF_DIR / "trainer" / "default.yaml", "trainer"):
        if key.leaf and key.description:
            line = key_line(text, key.path)
            assert " ".join(key.description.split()) in line, key.path
    assert key_line(text, "trainer.max_iters").startswith("trainer.max_iters=960 papers state iterations")
    # a comment continued on the aligned lines below is one description
    assert "(AVX512-BF16/AMX), else fp32" in key_line(text, "trainer.precision")
    # the demo model inherits unet's comments; interpolations show what they resolve to
    assert "width of level 1" in key_line(text, "model.base_channels")
    assert key_line(text, "model.num_classes").startswith("model.num_classes=6")


def test_help_follows_the_command_line():
    recipe = help_text("train", "experiment=unet_isbi")
    assert "unet_isbi (current)" in " ".join(recipe.split()) and "model.up_relu=true" in recipe
    assert key_line(recipe, "paper").startswith("paper={experiment: unet_isbi, ...}")
    text = help_text("train", "model=pspnet", "data=camvid")
    assert "pspnet (current)" in text and "camvid (current)" in text
    assert "pyramid pooling bin sizes" in key_line(text, "model.bins")
    assert "model.up_relu=" not in text  # the U-Net's keys are gone with it
    assert key_line(text, "model.num_classes").startswith("model.num_classes=11")


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_lists_its_own_keys(verb):
    text = help_text(verb)
    own = declared_keys(configs.CONF_DIR / f"{cli.VERBS[verb].config}.yaml", "")
    for key in own:
        if key.leaf and (key.description or key.depth <= verb_help_module.MAX_DEPTH) and not key.path.endswith("_target_"):
            assert f"\n  {key.path}=" in text, (verb, key.path)
            if key.description:
                assert " ".join(key.description.split()) in key_line(text, key.path)
    assert len(text.splitlines()) < 160, verb
