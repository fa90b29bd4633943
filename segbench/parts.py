"""A folder that travels in parts: packed here into tar archives of at most 60 MiB, each part
and each file checksummed; received part by part on the other side, and assembled only when
every part is there and every byte matches.

Why: the GPU machines this project can use take at most 64 MiB of files per command and reach
no package index, while CamVid is 182 MiB. Consecutive commands each carry one or more parts
(``receive`` keeps them in a store folder on that machine); the last one ``assemble``\\s the
folder and trains. Those machines keep files between commands only while they are warm: a fresh
one starts bare, so every part must arrive in one warm spell (``receive`` says what is missing).

Stdlib (and numpy, via :mod:`segbench.io`) only, and importing it does not import Hydra: it runs
on such a machine before the wheels of the missing packages, which travel the same way, are
installed. ::

    python -m segbench.parts pack ../shared/data/camvid .device [--max-mib 60]   # here
    python -m segbench.parts receive .device/camvid --store /tmp/segbench-parts  # there, per command
    python -m segbench.parts assemble camvid=/tmp/data/camvid --store /tmp/segbench-parts

Extraction writes only the regular files the manifest lists, each to a checked relative path
under the target folder: no links, devices, absolute paths or ``..``, whatever the archive holds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

from segbench.data.fetch import file_digest
from segbench.errors import SegbenchError
from segbench.io import atomic_write, write_json

SCHEMA = "segbench.parts/1"
MANIFEST = "manifest.json"
MAX_PART_BYTES = 60 * 2**20
# Worst-case tar bytes around a file's content: its header, a PAX header for a long name, padding;
# the archive ends with two zero blocks and is padded to whole records (tarfile.RECORDSIZE).
_HEADER = 3 * 512
_TRAILER = 2 * 512
_CHUNK = 2**20


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def _tar_bytes(size: int) -> int:
    return _HEADER + -(-size // 512) * 512


def _archive_bytes(used: int) -> int:
    return -(-used // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


# ---- here: pack ----------------------------------------------------------------------------------
def files_of(src: Path) -> list[str]:
    """Every regular file under ``src`` (relative POSIX paths, sorted); a link or a special file
    is refused: a copy must be the files themselves."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in [*files, *dirs]:
            path = Path(folder) / name
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise SegbenchError(f"{path} is a link or a special file; pack copies regular files only")
        found += [(Path(folder) / name).relative_to(src).as_posix() for name in files]
    return sorted(found)


def plan_parts(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Files in order, cut into runs whose tar archive stays within ``max_bytes``."""
    parts, current, used = [], [], _TRAILER
    for name, size in sizes.items():
        cost = _tar_bytes(size)
        if _archive_bytes(cost + _TRAILER) > max_bytes:
            raise SegbenchError(f"{name} ({size:,} bytes) does not fit in a part of {max_bytes:,} bytes")
        if current and _archive_bytes(used + cost) > max_bytes:
            parts.append(current)
            current, used = [], _TRAILER
        current.append(name)
        used += cost
    return parts + ([current] if current else [])


def _write_tar(src: Path, names: list[str], path: Path) -> None:
    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = tar.gettarinfo(src / name, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(src / name, "rb") as f:
                    tar.addfile(info, f)

    atomic_write(path, write)


def pack(src: str | Path, out: str | Path, name: str | None = None, max_bytes: int = MAX_PART_BYTES) -> Path:
    """Pack the folder ``src`` into ``out/<name>/`` (``<name>.partK-of-N.tar`` + ``manifest.json``);
    returns the manifest's path. ``out/<name>`` must not hold a packing already."""
    src = Path(src)
    if not src.is_dir():
        raise SegbenchError(f"pack: {src} is not a folder")
    name = name or src.resolve().name
    dest = Path(out) / name
    if dest.exists() and any(dest.iterdir()):
        raise SegbenchError(f"pack: {dest} is not empty; remove it or choose another output folder")
    files = files_of(src)
    if not files:
        raise SegbenchError(f"pack: {src} holds no files")
    sizes = {f: (src / f).stat().st_size for f in files}
    groups = plan_parts(sizes, max_bytes)
    manifest = {"schema": SCHEMA, "name": name, "max_part_bytes": max_bytes, "bytes": sum(sizes.values()),
                "parts": [], "files": []}
    for k, group in enumerate(groups, 1):
        part = dest / f"{name}.part{k}-of-{len(groups)}.tar"
        _write_tar(src, group, part)
        size = part.stat().st_size
        if size > max_bytes:  # the size plan is a bound; this would be a bug in it
            raise SegbenchError(f"pack: {part.name} came out at {size:,} bytes, over {max_bytes:,}")
        manifest["parts"].append({"file": part.name, "bytes": size, "sha256": sha256_of(part), "files": len(group)})
        manifest["files"] += [{"path": f, "bytes": sizes[f], "sha256": sha256_of(src / f), "part": k} for f in group]
    write_json(dest / MANIFEST, manifest)
    return dest / MANIFEST


# ---- there: receive, assemble -----------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """A manifest, checked: schema, a safe relative path for every file, parts numbered 1..N."""
    try:
        manifest = json.loads(Path(path).read_text())
        parts, files = manifest["parts"], manifest["files"]
        ok = manifest.get("schema") == SCHEMA and isinstance(manifest["name"], str) and parts
        ok = ok and all({"file", "bytes", "sha256"} <= set(p) for p in parts)
        ok = ok and all({"path", "bytes", "sha256", "part"} <= set(f) for f in files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SegbenchError(f"{path}: not a readable parts manifest ({err})") from None
    if not ok:
        raise SegbenchError(f"{path}: not a {SCHEMA} manifest")
    for f in files:
        if not (isinstance(f["path"], str) and isinstance(f["part"], int)) or not safe_relative(f["path"]) \
                or not 1 <= f["part"] <= len(parts):
            raise SegbenchError(f"{path}: file entry {f['path']!r} (part {f['part']}) would land outside the folder "
                                f"or in no part; refusing the whole set")
    if not safe_relative(manifest["name"]) or any(not isinstance(p["file"], str) or not safe_relative(p["file"])
                                                  or "/" in p["file"] for p in parts):
        raise SegbenchError(f"{path}: a part or set name is not a plain file name; refusing the whole set")
    return manifest


def safe_relative(name: str) -> bool:
    posix = PurePosixPath(name)
    return bool(name) and "\\" not in name and ":" not in name and not posix.is_absolute() and ".." not in posix.parts


def _status(manifest: dict, folder: Path) -> tuple[list[int], list[int]]:
    have = [k for k, p in enumerate(manifest["parts"], 1) if (folder / p["file"]).is_file()]
    return have, [k for k in range(1, len(manifest["parts"]) + 1) if k not in have]


def _check_part(manifest: dict, k: int, path: Path) -> None:
    part = manifest["parts"][k - 1]
    if path.stat().st_size != part["bytes"] or sha256_of(path) != part["sha256"]:
        raise SegbenchError(f"{manifest['name']}: part {k} of {len(manifest['parts'])} ({path}) is corrupt "
                            f"(size or sha256 differs from the manifest); carry it again")


def receive(carried: str | Path, store: str | Path) -> str:
    """Copy the parts found beside the manifest in ``carried`` into ``store/<name>/``, each checked
    against the manifest first; returns a line saying which parts the store holds and lacks."""
    carried = Path(carried)
    manifest_path = carried / MANIFEST if carried.is_dir() else carried
    manifest = read_manifest(manifest_path)
    kept = Path(store) / manifest["name"]
    kept.mkdir(parents=True, exist_ok=True)
    if (kept / MANIFEST).is_file():
        if read_manifest(kept / MANIFEST) != manifest:
            raise SegbenchError(f"{kept} holds parts of another packing of {manifest['name']}; remove that folder "
                                f"and carry every part of the new packing")
    else:
        write_json(kept / MANIFEST, manifest)
    for k, part in enumerate(manifest["parts"], 1):
        path = manifest_path.parent / part["file"]
        if path.is_file():
            _check_part(manifest, k, path)
            atomic_write(kept / part["file"], lambda tmp, path=path: shutil.copyfile(path, tmp))
    have, missing = _status(manifest, kept)
    return (f"{manifest['name']}: parts {', '.join(map(str, have)) or 'none'} of {len(manifest['parts'])} in {kept}"
            + (f"; missing {', '.join(map(str, missing))}" if missing else "; complete"))


def assemble(name: str, store: str | Path, into: str | Path) -> Path:
    """Check every part in ``store/<name>/``, extract the manifest's files into ``into``, check
    every file's size and sha256, then move the folder into place. A missing or corrupt part, or a
    file that differs, refuses the whole set with one message and leaves ``into`` untouched."""
    kept, into = Path(store) / name, Path(into)
    if not (kept / MANIFEST).is_file():
        raise SegbenchError(f"{name}: no parts received in {kept} (a fresh device machine starts bare: "
                            f"receive every part while it is warm)")
    manifest = read_manifest(kept / MANIFEST)
    stamp = json.dumps(manifest["parts"], sort_keys=True)
    done = kept / "assembled.json"
    if into.exists():
        if done.is_file() and json.loads(done.read_text()) == {"into": str(into.resolve()), "parts": stamp}:
            return into  # this very set, assembled by an earlier command of the same warm spell
        raise SegbenchError(f"{into} exists; remove it or assemble {name} elsewhere")
    have, missing = _status(manifest, kept)
    if missing:
        raise SegbenchError(f"{name}: incomplete set, {len(missing)} of {len(manifest['parts'])} parts missing "
                            f"({', '.join(map(str, missing))}) in {kept}; carry them (a fresh device machine "
                            f"starts bare: every part must arrive while it is warm)")
    for k in have:
        _check_part(manifest, k, kept / manifest["parts"][k - 1]["file"])
    partial = into.parent / f".{into.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for k, part in enumerate(manifest["parts"], 1):
            expected = {f["path"]: f for f in manifest["files"] if f["part"] == k}
            _extract_part(kept / part["file"], expected, partial, name, k)
        os.replace(partial, into)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    write_json(done, {"into": str(into.resolve()), "parts": stamp})
    return into


def _extract_part(archive: Path, expected: dict[str, dict], into: Path, name: str, k: int) -> None:
    """Write each listed regular file of one part under ``into``, hashing as it goes; anything
    else in the archive (links, devices, unlisted or missing names) refuses the set."""
    seen = set()
    with tarfile.open(archive) as tar:
        for member in tar:
            entry = expected.get(member.name)
            if entry is None or not member.isreg() or member.name in seen:
                raise SegbenchError(f"{name}: part {k} holds {member.name!r}, which its manifest does not list as a "
                                    f"file of that part; refusing the whole set")
            target = into / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(block)
                    size += len(block)
                    dst.write(block)
            if (size, digest.hexdigest()) != (entry["bytes"], entry["sha256"]):
                raise SegbenchError(f"{name}: {entry['path']} in part {k} differs from the manifest (size or sha256)")
            seen.add(member.name)
    if seen != set(expected):
        missing = sorted(set(expected) - seen)
        raise SegbenchError(f"{name}: part {k} lacks {len(missing)} listed file(s) (first: {missing[0]})")


# ---- what travels in which command ---------------------------------------------------------------
def loads(packed: list[str | Path], budget: int) -> list[list[str]]:
    """Group the parts of the packed folders ``packed`` into loads of at most ``budget`` bytes
    (largest first, each into the first load with room); each load lists the files to carry: the
    parts and the manifest of each set it holds a part of."""
    items = []
    for folder in map(Path, packed):
        manifest = read_manifest(folder / MANIFEST)
        size = (folder / MANIFEST).stat().st_size
        items += [(p["bytes"], folder / p["file"], folder / MANIFEST, size) for p in manifest["parts"]]
    bins: list[tuple[int, list[Path]]] = []
    for nbytes, part, manifest, msize in sorted(items, key=lambda i: -i[0]):
        for i, (used, paths) in enumerate(bins):
            extra = nbytes + (0 if manifest in paths else msize)
            if used + extra <= budget:
                bins[i] = (used + extra, paths + [part] + ([] if manifest in paths else [manifest]))
                break
        else:
            if nbytes + msize > budget:
                raise SegbenchError(f"{part} ({nbytes:,} bytes) with its manifest exceeds one command's {budget:,} bytes")
            bins.append((nbytes + msize, [part, manifest]))
    return [[str(p) for p in sorted(paths)] for _, paths in bins]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segbench.parts", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="split a folder into checksummed parts")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", default=None, help="the set's name (default: the folder's)")
    p.add_argument("--max-mib", type=float, default=MAX_PART_BYTES / 2**20)
    r = sub.add_parser("receive", help="keep the carried parts in the store, checked")
    r.add_argument("carried", nargs="+", type=Path, help="folders (or manifests) that came with this command")
    r.add_argument("--store", type=Path, default=Path("/tmp/segbench-parts"))
    a = sub.add_parser("assemble", help="verify and extract complete sets: NAME=TARGET ...")
    a.add_argument("targets", nargs="+", help="name=folder to create")
    a.add_argument("--store", type=Path, default=Path("/tmp/segbench-parts"))
    args = parser.parse_args(argv)
    try:
        if args.action == "pack":
            manifest = read_manifest(pack(args.src, args.out, args.name, int(args.max_mib * 2**20)))
            for part in manifest["parts"]:
                print(f"{args.out / manifest['name'] / part['file']}  {part['bytes'] / 2**20:.1f} MiB  "
                      f"{part['files']} files")
        elif args.action == "receive":
            for folder in args.carried:
                print(receive(folder, args.store))
        else:
            for target in args.targets:
                name, sep, folder = target.partition("=")
                if not sep or not name or not folder:
                    raise SegbenchError(f"assemble: {target!r} is not NAME=FOLDER")
                print(f"{name}: assembled and verified in {assemble(name, args.store, folder)}")
    except SegbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
