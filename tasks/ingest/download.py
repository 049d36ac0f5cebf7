"""Resumable HTTP downloads verified against published checksums.

A dump file is tens of GB; a dropped connection must not cost what was already fetched. Bytes go
to ``<dest>.part``; a retry asks for the rest with ``Range: bytes=<have>-`` and appends if the
server answers ``206 Partial Content`` (a ``200`` means it ignores ranges: start over). The
digest is computed while writing (the existing part is hashed once before resuming), checked
against the published value, and only then is the file renamed into place: a file at ``dest`` is
always complete and verified. A mismatch deletes the part (it cannot be trusted) and raises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


class DownloadError(RuntimeError):
    """A download that could not be completed after the allowed attempts."""


class ChecksumError(DownloadError):
    """The bytes do not match the published checksum (the partial file was removed)."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # md5 | sha1 | sha256 | sha512
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported checksum algorithm {self.algorithm!r}")
        if len(self.hexdigest) != ALGORITHMS[self.algorithm] or not all(
            c in "0123456789abcdef" for c in self.hexdigest.lower()
        ):
            raise ValueError(f"not a {self.algorithm} digest: {self.hexdigest!r}")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str
    verified: str | None  # the algorithm checked against a published value, None if none was published
    resumed_from: int  # bytes already there when this call started (0: fresh)
    cached: bool  # the verified file was already in place


def parse_checksum_file(text: str) -> dict[str, str]:
    """``{file name: hex digest}`` from ``md5sum``/``sha1sum``/``sha256sum`` output."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            digest, name = parts
            name = name.strip().lstrip("*").removeprefix("./")
            out[name] = digest.lower()
            out.setdefault(name.rsplit("/", 1)[-1], digest.lower())  # also by base name
    return out


def _hash_file(path: Path, algorithm: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    h, h256 = hashlib.new(algorithm), hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            h256.update(chunk)
    return h, h256


def download(
    url: str,
    dest: str | os.PathLike,
    checksum: Checksum | None = None,
    *,
    session: requests.Session | None = None,
    attempts: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> DownloadResult:
    """Fetch ``url`` to ``dest``, resuming a previous ``.part``, verifying ``checksum`` if given.

    Hugging Face serves LFS files with their sha256 as ``X-Linked-Etag``; when no checksum is
    given and the server publishes one that way, it is verified too.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm = checksum.algorithm if checksum else "sha256"
    if dest.exists() and checksum is not None:
        h, h256 = _hash_file(dest, algorithm)
        if h.hexdigest() == checksum.hexdigest.lower():
            return DownloadResult(dest, dest.stat().st_size, h256.hexdigest(), algorithm, 0, True)
        logger.warning("%s does not match its checksum; downloading again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    started_with = part.stat().st_size if part.exists() else 0
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and have:  # nothing left to fetch: the part is whole
                    pass
                elif resp.status_code == 206 and have:
                    _append(resp, part, mode="ab")
                elif resp.status_code == 200:
                    have = 0
                    _append(resp, part, mode="wb")
                else:
                    resp.raise_for_status()
                    raise DownloadError(f"{url}: unexpected HTTP {resp.status_code}")
                published = _published_checksum(resp, checksum)
                expected_total = _total_length(resp, have)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            last_error = exc
            logger.warning("%s: attempt %d/%d failed (%s); will resume", url, attempt, attempts, exc)
            time.sleep(backoff * attempt)
            continue
        size = part.stat().st_size
        if expected_total is not None and size < expected_total:
            last_error = DownloadError(f"{url}: got {size} of {expected_total} bytes")
            logger.warning("%s: short read (%d of %d bytes); will resume", url, size, expected_total)
            time.sleep(backoff * attempt)
            continue
        h, h256 = _hash_file(part, published.algorithm if published else "sha256")
        if published is not None and h.hexdigest() != published.hexdigest.lower():
            part.unlink()
            raise ChecksumError(
                f"{url}: {published.algorithm} {h.hexdigest()} != published {published.hexdigest}"
            )
        os.replace(part, dest)
        logger.info("downloaded %s (%d bytes, resumed from %d)", url, size, started_with)
        return DownloadResult(
            dest, size, h256.hexdigest(), published.algorithm if published else None, started_with, False
        )
    raise DownloadError(f"{url}: gave up after {attempts} attempts ({last_error})")


def _append(resp: requests.Response, part: Path, mode: str) -> None:
    # Small pieces, flushed as they come: after a dropped connection at most one piece is lost.
    with part.open(mode) as fh:
        for chunk in resp.iter_content(64 << 10):
            fh.write(chunk)


def _total_length(resp: requests.Response, have: int) -> int | None:
    """The full size of the resource, from Content-Range (206) or Content-Length (200)."""
    if resp.status_code == 206:
        rng = resp.headers.get("Content-Range", "")
        total = rng.rsplit("/", 1)[-1]
        return int(total) if total.isdigit() else None
    if resp.status_code == 200:
        length = resp.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None
    return None


def _published_checksum(resp: requests.Response, given: Checksum | None) -> Checksum | None:
    if given is not None:
        return given
    etag = (resp.headers.get("X-Linked-Etag") or "").strip('"').lower()
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
        return Checksum("sha256", etag)
    return None


def fetch_text(url: str, session: requests.Session | None = None, timeout: float = 60.0) -> str:
    """A small text resource (a checksum list, a listing, a status file)."""
    resp = (session or requests.Session()).get(url, timeout=timeout)
    resp.raise_for_status()
    if url.endswith(".gz"):
        import gzip

        return gzip.decompress(resp.content).decode("utf-8")
    return resp.text
