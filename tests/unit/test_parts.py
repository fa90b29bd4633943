"""segbench.parts: a folder packed into checksummed parts, received part by part, assembled only whole."""
import hashlib
import io
import json
import tarfile

import pytest

from segbench import parts
from segbench.errors import SegbenchError


@pytest.fixture
def tree(tmp_path):
    """A small dataset-like folder: nested files of a few KiB (random bytes: tar cannot shrink them)."""
    src = tmp_path / "src" / "demo"
    for k in range(12):
        path = src / ("images" if k % 2 else "labels") / f"{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(k).encode()).digest() * (40 + 10 * k))
    (src / "list.txt").write_text("a b\n")
    return src


def packed(tree, out, max_bytes=20 * 2**10):
    return parts.read_manifest(parts.pack(tree, out, max_bytes=max_bytes))


def same_tree(a, b):
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    return files(a) == files(b)


def test_round_trip_in_parts_received_one_command_at_a_time(tree, tmp_path):
    manifest = packed(tree, tmp_path / "out")
    files = sorted((tmp_path / "out" / "demo").glob("*.tar"))
    assert len(manifest["parts"]) == len(files) > 2
    assert all(f.stat().st_size <= 20 * 2**10 for f in files)
    store = tmp_path / "store"
    for k, part in enumerate(files, 1):  # each command carries the manifest and one part
        carried = tmp_path / f"command{k}" / "demo"
        carried.mkdir(parents=True)
        (carried / "manifest.json").write_bytes((tmp_path / "out" / "demo" / "manifest.json").read_bytes())
        (carried / part.name).write_bytes(part.read_bytes())
        line = parts.receive(carried, store)
        assert line.endswith("complete") == (k == len(files)), line
    into = parts.assemble("demo", store, tmp_path / "data" / "demo")
    assert same_tree(tree, into)
    assert parts.assemble("demo", store, into) == into  # the same set again (a later command): nothing to do


def test_a_missing_part_refuses_the_set_with_one_message(tree, tmp_path):
    manifest = packed(tree, tmp_path / "out")
    (tmp_path / "out" / "demo" / manifest["parts"][1]["file"]).unlink()
    parts.receive(tmp_path / "out" / "demo", tmp_path / "store")
    with pytest.raises(SegbenchError, match=r"incomplete set, 1 of \d+ parts missing \(2\)"):
        parts.assemble("demo", tmp_path / "store", tmp_path / "data" / "demo")
    assert not (tmp_path / "data").exists()


def test_a_corrupt_part_is_refused_on_receipt_and_on_assembly(tree, tmp_path):
    manifest = packed(tree, tmp_path / "out")
    part = tmp_path / "out" / "demo" / manifest["parts"][0]["file"]
    data = bytearray(part.read_bytes())
    data[700] ^= 1  # one bit of a file's content
    part.write_bytes(bytes(data))
    with pytest.raises(SegbenchError, match="part 1 of .* is corrupt"):
        parts.receive(tmp_path / "out" / "demo", tmp_path / "store")
    # a part that went bad in the store (or was put there by hand) is caught when assembling
    fresh = tmp_path / "fresh"
    packed(tree, fresh)
    parts.receive(fresh / "demo", tmp_path / "store2")
    (tmp_path / "store2" / "demo" / manifest["parts"][0]["file"]).write_bytes(bytes(data))
    with pytest.raises(SegbenchError, match="corrupt"):
        parts.assemble("demo", tmp_path / "store2", tmp_path / "data" / "demo")
    assert not (tmp_path / "data" / "demo").exists()


def test_a_part_from_another_packing_is_refused(tree, tmp_path):
    packed(tree, tmp_path / "a")
    (tree / "list.txt").write_text("changed\n")
    packed(tree, tmp_path / "b")
    parts.receive(tmp_path / "a" / "demo", tmp_path / "store")
    with pytest.raises(SegbenchError, match="another packing"):
        parts.receive(tmp_path / "b" / "demo", tmp_path / "store")


def forged_set(tmp_path, members, listed):
    """A one-part set whose tar holds ``members`` [(TarInfo, bytes)] and whose manifest lists ``listed``."""
    folder = tmp_path / "forged" / "demo"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    (folder / "demo.part1-of-1.tar").write_bytes(buffer.getvalue())
    manifest = {"schema": parts.SCHEMA, "name": "demo", "max_part_bytes": 2**20, "bytes": 1,
                "parts": [{"file": "demo.part1-of-1.tar", "bytes": len(buffer.getvalue()),
                           "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "files": len(listed)}],
                "files": [{"path": p, "bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest(), "part": 1}
                          for p in listed]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_extraction_writes_only_listed_regular_files_inside_the_folder(tmp_path):
    link = tarfile.TarInfo("a.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    folder = forged_set(tmp_path, [(link, None)], ["a.txt"])
    parts.receive(folder, tmp_path / "store")
    with pytest.raises(SegbenchError, match="does not list as a file"):
        parts.assemble("demo", tmp_path / "store", tmp_path / "data" / "demo")
    assert not (tmp_path / "data" / "demo").exists()
    with pytest.raises(SegbenchError, match="outside the folder"):  # the manifest itself is checked first
        parts.receive(forged_set(tmp_path / "2", [], ["../escape.txt"]), tmp_path / "store3")
    unlisted = tarfile.TarInfo("extra.txt")
    unlisted.size = 1
    folder = forged_set(tmp_path / "3", [(unlisted, b"x")], ["a.txt"])
    parts.receive(folder, tmp_path / "store4")
    with pytest.raises(SegbenchError, match="does not list"):
        parts.assemble("demo", tmp_path / "store4", tmp_path / "data4" / "demo")


def test_loads_fit_the_budget_and_carry_each_parts_manifest(tree, tmp_path):
    packed(tree, tmp_path / "out")
    budget = 25 * 2**10  # one part and its manifest
    loads = parts.loads([tmp_path / "out" / "demo"], budget)
    assert len(loads) > 1
    carried = [p for load in loads for p in load if p.endswith(".tar")]
    assert sorted(carried) == sorted(str(p) for p in (tmp_path / "out" / "demo").glob("*.tar"))
    for load in loads:
        assert str(tmp_path / "out" / "demo" / "manifest.json") in load
        assert sum((tmp_path / p).stat().st_size for p in load) <= budget


def test_pack_refuses_links_and_a_used_output_folder(tree, tmp_path):
    packed(tree, tmp_path / "out")
    with pytest.raises(SegbenchError, match="not empty"):
        parts.pack(tree, tmp_path / "out")
    (tree / "link.png").symlink_to(tree / "list.txt")
    with pytest.raises(SegbenchError, match="link"):
        parts.pack(tree, tmp_path / "other")
