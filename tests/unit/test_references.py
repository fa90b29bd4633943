"""Comments, docstrings, the README, the user guide (docs/) and the Makefile point only at files that exist: a path
written in prose (``segbench/engine/trainer.py``, ``conf/trainer/default.yaml``) is checked
against the tree, so a moved or deleted file cannot leave a stale pointer behind."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((REPO / "segbench").rglob("*.py")), *sorted((REPO / "scripts").glob("*.py")),
           *sorted((REPO / "benchmarks").glob("*.py")), REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
           REPO / "mkdocs.yml", REPO / "Makefile"]
PATH = re.compile(r"\b(?:segbench|scripts|benchmarks|tests|conf|docs)/[\w/.-]+\.(?:py|md|yaml|json|txt)\b")
BASES = (REPO, REPO / "segbench")  # ``conf/...`` is written relative to the package


# A Markdown comment is not shown to the reader: the links it holds are enabled later (at a merge).
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)


def referenced_paths(text: str) -> set[str]:
    return {m.group(0) for m in PATH.finditer(HTML_COMMENT.sub("", text))}


def test_the_pattern_finds_prose_paths_and_skips_globs():
    text = "see segbench/engine/trainer.py and conf/model/<name>.yaml or conf/experiment/*.yaml"
    assert referenced_paths(text) == {"segbench/engine/trainer.py"}


def test_links_in_markdown_comments_are_not_shown_so_not_checked():
    text = "[a](docs/errors.md)\n<!-- later:\n[b](docs/not-yet.md)\n-->"
    assert referenced_paths(text) == {"docs/errors.md"}


def test_the_guide_is_checked():
    assert REPO / "docs" / "index.md" in SOURCES


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_referenced_file_exists(source):
    missing = sorted(ref for ref in referenced_paths(source.read_text())
                     if not any((base / ref).exists() for base in BASES))
    assert not missing, f"{source.relative_to(REPO)} points at files that do not exist: {missing}"
