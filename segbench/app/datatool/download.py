"""``segbench data download data=<name> data.root=<dir>``: fetch, verify, unpack, prepare, check.

The one place segbench touches the network (datasets never download while reading). The
archives, each with its URL, checksum and their sources, are on the datasets' cards
(``card.download`` of each reader class, :mod:`segbench.data.card`); :func:`catalogue` lists
them all. Per archive the action

1. downloads to ``<data.root>/downloads/<file>.part``, resuming a partial file
   (:mod:`segbench.data.fetch`);
2. verifies the published checksum, then renames ``.part`` to ``<file>``: a file without ``.part``
   is always complete, and verified unless ``<file>.unverified`` stands beside it
   (``download.verify=false``, only when asked: said when it happens, and the next run with
   verification on verifies the kept archive, or fetches it again, before counting it as done);
3. unpacks it, every member checked before anything is extracted (:mod:`segbench.data.unpack`),
   writing a marker ``.segbench-extracted-<file>.json`` last (it records whether the archive was verified);
4. runs the dataset's ``prepare`` and ``check`` (:mod:`segbench.app.datatool.prepare`,
   :mod:`segbench.app.datatool.check`).

Every URL and checksum on a card names its source. Where no checksum is published anywhere we
could find, the entry says so (``checksum=None``) instead of inventing one; such archives are
only size-checked against the server's ``Content-Length``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from segbench.app.datatool.check import check
from segbench.app.datatool.prepare import prepare_dataset
from segbench.data.card import Archive, DatasetDownload, card_of, cards
from segbench.data.fetch import fetch, verify
from segbench.data.unpack import extract
from segbench.data.walk import dataset_class
from segbench.errors import SegbenchError
from segbench.io import read_json, write_json
from segbench.tables import markdown_table

EXTRACTED_PREFIX = ".segbench-extracted-"


# ---- the catalogue ------------------------------------------------------------------------
def catalogue() -> dict[str, DatasetDownload]:
    """``config name -> its archives`` for every dataset whose card has a download entry."""
    return {name: card.download for name, card in cards().items() if card.download is not None}


# ---- the action ---------------------------------------------------------------------------
def archive_url(archive: Archive, mirror: str | None) -> str | None:
    return f"{mirror.rstrip('/')}/{archive.file}" if mirror else archive.url


def extracted_marker(root: Path, archive: Archive) -> Path:
    return root / f"{EXTRACTED_PREFIX}{archive.file}.json"


def options(cfg) -> dict:
    opts = dict(cfg.get("download", {}) or {})
    opts["checksums"] = dict(opts.get("checksums") or {})
    return opts


def unverified_mark(archive_path: Path) -> Path:
    """Beside an archive kept with ``download.verify=false``: its checksum was never compared."""
    return archive_path.with_name(archive_path.name + ".unverified")


def obtain(archive: Archive, downloads: Path, opts: dict) -> Path:
    """The archive in ``downloads``, downloading (or resuming) it when needed, verified unless
    ``download.verify=false``; an archive kept unverified is verified by the next run that may."""
    final = downloads / archive.file
    url = archive_url(archive, opts.get("mirror"))
    checksum = opts["checksums"].get(archive.file, archive.checksum)
    if final.is_file():
        if unverified_mark(final).is_file() and opts.get("verify", True):
            check_archive(final, checksum, url or str(final))
            unverified_mark(final).unlink()
        print(f"{archive.file}: already downloaded ({final})"
              + (" - unverified (download.verify=false)" if unverified_mark(final).is_file() else ""))
        return final
    if url is None:
        raise SegbenchError(f"{archive.file} is not in {downloads} and cannot be fetched automatically")
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / f"{archive.file}.part"
    print(f"{archive.file}: {url}" + (f" ({archive.size})" if archive.size else ""))
    fetch(url, part, timeout=float(opts.get("timeout", 60)))
    if opts.get("verify", True):
        check_archive(part, checksum, url)
        unverified_mark(final).unlink(missing_ok=True)  # left by an unverified copy that failed its check
    else:  # marked before it gets its final name: a file without the mark is always verified
        unverified_mark(final).touch()
        print(f"note: {archive.file} is unverified: download.verify=false, so its checksum was not compared; "
              f"a later download with download.verify=true verifies it before using it")
    os.replace(part, final)
    return final


def check_archive(path: Path, checksum: str | None, url: str) -> None:
    if checksum:
        verify(path, checksum, url)
        print(f"{path.name}: {checksum.partition(':')[0]} checksum verified")
    else:
        print(f"note: no published checksum for {path.name}; only its length was checked")


def _extracted_verified(marker: Path) -> bool:
    """Whether the archive behind an extraction marker was verified (markers before this field: yes)."""
    return read_json(marker).get("verified", True) is not False


def download(cfg) -> dict:
    name = cfg.data.name
    card = card_of(dataset_class(cfg))
    spec = card.download
    if spec is None:
        raise SegbenchError(f"nothing to download for data={name}; downloadable: {', '.join(catalogue())}"
                            + (f" ({card.no_download})" if card.no_download else ""))
    opts = options(cfg)
    root = Path(cfg.data.root).expanduser()
    downloads = Path(opts.get("dir") or root / "downloads").expanduser()
    if spec.manual and not opts.get("mirror"):
        missing = [a.file for a in spec.archives if not (downloads / a.file).is_file()
                   and not extracted_marker(root, a).is_file()]
        if missing:
            raise SegbenchError(spec.manual.format(downloads=downloads))
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for archive in spec.archives:
        marker = extracted_marker(root, archive)
        reverify = marker.is_file() and not _extracted_verified(marker) and opts.get("verify", True)
        if marker.is_file() and not reverify:
            print(f"{archive.file}: already extracted ({marker.name})"
                  + ("" if _extracted_verified(marker) else " from an unverified archive (download.verify=false)"))
            continue
        kept = (downloads / archive.file).is_file()
        path = obtain(archive, downloads, opts)
        if not (reverify and kept):  # re-verifying the very file that was extracted needs no new extraction
            extract(path, root, archive.move, archive.drop)
        write_json(marker, {"archive": archive.file, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "verified": not unverified_mark(path).is_file()})
        if not opts.get("keep_archives", True):
            path.unlink(missing_ok=True)
        done.append(archive.file)
    for note in spec.notes:
        print(f"note: {note}")
    result = {"dataset": name, "root": str(root), "extracted": done}
    if opts.get("prepare", True):
        prepare_dataset(cfg)
    if opts.get("check", True):
        result["check"] = check(cfg)
    return result


def table() -> str:
    """Every archive as a Markdown table (the README's; tests compare it with this module)."""
    rows = [[f"`{name}`", f"`{a.file}`", a.url or "account needed",
             f"`{a.checksum}`" if a.checksum else "none published", a.source]
            for name, spec in catalogue().items() for a in spec.archives]
    return markdown_table(["data=", "file", "URL", "checksum", "source"], rows, fmt=str)

