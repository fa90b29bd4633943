"""Comments, docstrings, the README and the Makefile point only at files that exist: a path
written in prose (``segbench/engine/trainer.py``, ``conf/trainer/default.yaml``) is checked
against the tree, so a moved or deleted file cannot leave a stale pointer behind."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((REPO / "segbench").rglob("*.py")), *sorted((REPO / "scripts").glob("*.py")),
           *sorted((REPO / "benchmarks").glob("*.py")), REPO / "README.md", REPO / "Makefile"]
PATH = re.compile(r"\b(?:segbench|scripts|benchmarks|tests|conf|docs)/[\w/.-]+\.(?:py|md|yaml|json|txt)\b")
BASES = (REPO, REPO / "segbench")  # ``conf/...`` is written relative to the package


def referenced_paths(text: str) -> set[str]:
    return {m.group(0) for m in PATH.finditer(text)}


def test_the_pattern_finds_prose_paths_and_skips_globs():
    text = "see segbench/engine/trainer.py and conf/model/<name>.yaml or conf/experiment/*.yaml"
    assert referenced_paths(text) == {"segbench/engine/trainer.py"}


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_referenced_file_exists(source):
    missing = sorted(ref for ref in referenced_paths(source.read_text())
                     if not any((base / ref).exists() for base in BASES))
    assert not missing, f"{source.relative_to(REPO)} points at files that do not exist: {missing}"
