"""The README stays one page and the guide stays whole: every page in docs/ is in the site's nav
(mkdocs.yml) and every nav entry exists; tables generated from the code are the code's."""
from pathlib import Path

import yaml

from segbench.app.datatool import download

REPO = Path(__file__).resolve().parents[2]


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_readme_is_one_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_every_guide_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(listed) == on_disk, "add the page to mkdocs.yml's nav (or remove the entry)"


def test_the_download_table_is_the_catalogue():
    assert download.table().rstrip("\n") in (REPO / "docs" / "getting-data.md").read_text(), (
        "docs/getting-data.md: paste segbench.app.datatool.download.table() over the old table")
