"""Fetch one URL resumably and verify it against a published checksum.

The file grows as ``<name>.part``, continued after an interruption with an HTTP ``Range``
request (a server that ignores it restarts the file, and we say so). :func:`verify` compares
the finished file's digest with the published one and deletes it on a mismatch: resuming onto
wrong bytes could never succeed.
"""
from __future__ import annotations

import hashlib
import http.client
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from segbench.errors import SegbenchError

CHUNK = 1 << 20


def _bar(total: int | None, initial: int, desc: str):
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
            f"archive needs \"+download.checksums={{{path.name}: '{algorithm}:<its digest>'}}\" "
            f"(download.verify=false skips the check)")
