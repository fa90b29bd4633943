"""Every `segbench ...` command line in the code blocks of the README and of the user guide
(docs/*.md) runs, so neither can drift from the code: `--help` lines as written, `$ segbench data ...` examples for real on the fixture
datasets (their printed output must match the README's), a few others for real on a tiny run, the
rest composed with `--cfg job` (first grid point of a sweep). The Python API block runs as written.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from segbench import cli
from segbench.app.overrides import swept_keys
from tests.conftest import REPO, TINY_SYNTHETIC
from tests.fixtures import datasets as fx

pytestmark = pytest.mark.slow
# The README and every page of the guide, as one text (a page another branch adds is covered once it exists).
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(path.read_text() for path in DOC_FILES)

# README paths of the fixture examples -> how to build them.
DOC_FIXTURES = {"voc": fx.make_voc, "voc_aug": fx.make_voc_aug_sbd, "cityscapes": fx.make_cityscapes,
                "camvid": fx.make_camvid, "sunrgbd_official": fx.make_sunrgbd_official, "isbi": fx.make_isbi}
# Placeholders in the README's command lines -> something that composes.
PLACEHOLDERS = {"<name>": "camvid", "<dir>": "/tmp/segbench-readme", "<run dir>": "runs/x",
                "<the run dir>": "runs/x", "<your overrides>": "", "<hex>": "0123abcd"}
# Commands that are also run for real below (with a tiny run / fixture data): why the rest is only composed.
NOT_RUN_FOR_REAL = {
    "train": "hours on real data / needs the dataset; composed only (a tiny real run below)",
    "eval": "needs a trained run of the named dataset; composed only",
    "sweep": "a grid of trainings; its first grid point is composed",
    "bench": "minutes at the default size; composed only (tests/unit/test_bench.py runs it small)",
    "report": "needs runs; composed only (tests/integration/test_report.py)",
    "data download": "network; composed only (tests/integration/test_download.py uses a local server)",
}


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block, backslash continuations joined."""
    blocks = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        lines, pending = [], ""
        for line in body.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append(pending + line)
            pending = ""
        blocks.append((lang, lines))
    return blocks


def command_lines() -> list[str]:
    """Every line of a code block that starts with `segbench ` (in ```text output blocks: with
    `$ segbench `, the rest there is output), comments cut."""
    found = []
    for lang, lines in code_blocks(DOCS):
        for line in lines:
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            elif lang == "text":
                continue
            if line.startswith("segbench "):
                found.append(re.sub(r"\s+#.*$", "", line).strip())
    return found


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    GlobalHydra.instance().clear()
    saved = sys.argv
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out + out.err


def substitute(line: str) -> list[str]:
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    assert "<" not in line, f"unknown placeholder in README command: {line}"
    return shlex.split(line)[1:]


def first_grid_point(args: list[str]) -> list[str]:
    swept = set(swept_keys(args))
    out = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if arg in ("-m", "--multirun"):
            continue
        out.append(f"{arg.split('=', 1)[0]}={arg.split('=', 1)[1].split(',')[0]}" if key in swept else arg)
    return out


def test_readme_and_guide_are_both_read():
    assert len(DOC_FILES) > 5 and all(path.exists() for path in DOC_FILES)
    readme_only = [line for lang, lines in code_blocks((REPO / "README.md").read_text()) for line in lines]
    assert any(line.startswith("make demo") for line in readme_only)


def test_readme_shows_the_new_verbs():
    lines = command_lines()
    assert len(lines) > 30
    for verb in ("predict", "runs", "data download"):
        assert any(line.startswith(f"segbench {verb}") for line in lines), verb


def test_every_readme_command_composes(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    failures = []
    for line in command_lines():
        args = substitute(line)
        if any(a in ("--help", "-h") for a in args) or args == []:
            continue  # run as written in test_every_help_line
        if args[0] == "data" and len(args) > 1 and args[1] in ("check", "prepare", "stats") and "/tmp/doc/" in line:
            continue  # run for real in test_data_examples_print_what_the_readme_shows
        args = first_grid_point(args)
        if "--cfg" not in args:
            args += ["--cfg", "job"]
        code, out = run_main(args, capsys)
        if code != 0:
            failures.append(f"{line}\n    -> exit {code}: {out.strip().splitlines()[-1:] if out.strip() else ''}")
    assert not failures, "README commands that do not compose:\n" + "\n".join(failures)


def test_every_help_line(capsys):
    helps = [line for line in command_lines() if "--help" in line.split()]
    assert "segbench --help" in helps and "segbench eval --help" in helps
    for line in helps:
        code, out = run_main(substitute(line), capsys)
        assert code == 0, line
    for verb in cli.VERBS:  # and every verb's own help, which the README promises
        code, out = run_main([verb, "--help"], capsys)
        assert code == 0 and out.startswith(f"segbench {verb}: "), verb
        assert "is powered by Hydra" not in out and "bench_all" not in out, verb
        if verb in ("eval", "predict"):
            assert "\n  model:" not in out and "\n  postprocess: crf, none" in out, verb
    code, out = run_main(["data", "--help"], capsys)
    assert "download | check | prepare | stats" in out and "\n  data: camvid" in out


def test_data_examples_print_what_the_readme_shows(tmp_path, capsys, monkeypatch):
    """`$ segbench data ...` lines with their output, for real on the fixtures the README used."""
    monkeypatch.chdir(tmp_path)
    built = {}
    checked = 0
    for lang, lines in code_blocks(DOCS):
        if lang != "text":
            continue
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.startswith("$ segbench data "):
                i += 1
                continue
            expected = []
            i += 1
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            name = re.search(r"/tmp/doc/(\w+)", line).group(1)
            if name not in built:
                built[name] = DOC_FIXTURES[name](tmp_path / "doc" / name)
            root = str(built[name])
            code, out = run_main(substitute(re.sub(r"\s+#.*$", "", line[2:]).replace(f"/tmp/doc/{name}", root)), capsys)
            assert code == 0, f"{line}\n{out}"
            for want in expected:
                want = want.replace(f"/tmp/doc/{name}", root).strip()
                if want.startswith("cityscapes: already prepared ("):
                    want = want.split(" (")[0]
                assert want in out, f"README shows {want!r} after {line!r}; got:\n{out}"
            checked += 1
    assert checked >= 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_root) -> tuple[Path, str]:
    """`segbench train` through the CLI, in this process (a subprocess would double the cost)."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("readme") / "runs" / "synthetic" / "unet_small" / "t0"
    printed = io.StringIO()
    GlobalHydra.instance().clear()
    saved = sys.argv
    try:
        with contextlib.redirect_stdout(printed):
            cli.main(["train", *TINY_SYNTHETIC, f"data.root={synthetic_root}", "trainer.max_iters=2",
                      "trainer.val_interval=2", f"run_dir={run}"])
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return run, printed.getvalue()


def test_train_prints_its_run_dir_when_it_starts(tiny_run):
    run, printed = tiny_run
    lines = printed.splitlines()
    assert lines[0] == f"run dir: {run}", printed[:500]  # before any iteration / validation line
    assert any(line.startswith(f"run dir: {run}   wall time") for line in lines)


def test_predict_and_runs_lines_for_real(tiny_run, tmp_path, capsys, monkeypatch):
    tiny_run = tiny_run[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGBENCH_RUNS", str(tiny_run.parents[2]))
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "street.png"), np.full((40, 52, 3), 90, np.uint8))
    line = next(line for line in command_lines() if line.startswith("segbench predict run=<run dir> input=photos/"))
    code, out = run_main(substitute(line.replace("<run dir>", str(tiny_run))), capsys)
    assert code == 0, out
    assert {p.name for p in (tmp_path / "photos_pred").iterdir()} == {
        "street.png", "street_color.png", "street_overlay.png", "legend.png"}
    code, out = run_main(substitute(next(line for line in command_lines() if line == "segbench runs")), capsys)
    assert code == 0 and "synthetic/unet_small/t0" in out and "done" in out and "2/2" in out, out


def test_python_api_block_runs_as_written(tmp_path, monkeypatch, capsys):
    block = next(body for lang, body in code_blocks((REPO / "docs" / "api.md").read_text()) if lang == "python")
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(block), "docs/api.md (Python API)", "exec"), {})
    assert re.search(r"mIoU \d\.\d{3} over 4 images", capsys.readouterr().out)
