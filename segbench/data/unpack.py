"""Unpack a downloaded archive into ``data.root`` without letting it write anywhere else.

Every member is checked *before* anything is extracted: an absolute path, a ``..`` component,
a link pointing out of the folder, a device or FIFO refuses the whole archive. Then the archive
is extracted member by member (each through :func:`segbench.trust.confined_path`, with the
stdlib's ``data`` filter behind it) into a temporary folder under ``data.root``, and the result
is moved into place.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from segbench.data.conversion import progress
from segbench.errors import SegbenchError
from segbench.trust import confined_path


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
    if PurePosixPath(name.rstrip("/") or ".") != PurePosixPath("."):  # "./" is the folder itself
        confined_path(into, name.rstrip("/"), source=str(archive))


def _extract(path: Path, into: Path) -> None:
    """Extract member by member, each through ``confined_path`` (which also resolves links
    extracted before it), after :func:`unsafe_members` found none escaping."""
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


def extract(path: Path, root: Path, move: Sequence[tuple[str, str]] = (), drop: Sequence[str] = ()) -> None:
    """Check every member, extract into a temporary folder under ``root``, move into place:
    first each ``(path in the archive, path under root)`` of ``move``, then, after deleting the
    ``drop`` folders, whatever else the archive holds, under its own name."""
    bad = unsafe_members(path)
    if bad:
        raise SegbenchError(f"{path} has {len(bad)} member(s) that would be written outside {root} "
                            f"(first: {bad[0]}); nothing was extracted. Is it the archive you meant?")
    tmp = root / f".extract-{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _extract(path, tmp)
        for inside, outside in move:
            if not (tmp / inside).exists():
                raise SegbenchError(f"{path.name} has no {inside}/; has the upstream repository changed its layout?")
            _merge(tmp / inside, root / outside)
        for folder in drop:
            shutil.rmtree(tmp / folder, ignore_errors=True)
        for child in list(tmp.iterdir()):
            _merge(child, root / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

