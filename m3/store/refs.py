"""Ref version files: how they are read, and how a repair drops versions without rewriting any.

``refs/KIND/NAME/<seq:010d>.json`` holds ``{"manifest", "previous", "at"}``; the highest seq is the
head. Versions are created if absent and never changed, so a damaged version (a file that does
not parse, or names a damaged artifact) is dropped by *appending* one: a **repair version** with
``"drops": [seq, ...]`` lists the versions it voids, and its ``"manifest"`` is the head it leaves
(the old head, or ``null`` when the head itself was dropped: the ref then has no head until a run
writes one). Readers skip dropped versions; a damaged version nobody dropped makes the ref refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from m3.store.manifest import check_id

SEQ_WIDTH = 10


@dataclass(frozen=True)
class RefEntry:
    ref: str
    seq: int
    manifest: str
    previous: str | None
    at: str


@dataclass(frozen=True)
class RefVersion:
    """One version file as stored; ``manifest`` is None for a repair version that dropped the head."""

    seq: int
    manifest: str | None
    previous: str | None
    at: str
    drops: tuple[int, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class RefState:
    """Everything one ref's folder says: its live history, its head, and what it cannot vouch for."""

    ref: str
    versions: list[RefVersion]
    damaged: dict[int, str] = field(default_factory=dict)  # seq -> problem, for files nobody dropped
    dropped: frozenset[int] = frozenset()

    @property
    def history(self) -> list[RefEntry]:
        """Live versions, oldest first (dropped ones and head-less repair versions left out)."""
        return [
            RefEntry(self.ref, v.seq, v.manifest, v.previous, v.at)
            for v in self.versions
            if v.manifest is not None and v.seq not in self.dropped
        ]

    @property
    def last(self) -> RefVersion | None:
        return self.versions[-1] if self.versions else None

    @property
    def next_seq(self) -> int:
        seqs = [v.seq for v in self.versions] + list(self.damaged) + list(self.dropped)
        return max(seqs, default=0) + 1

    @property
    def head(self) -> RefEntry | None:
        """The newest version, unless it is a repair version that dropped the head (then None).

        Only meaningful when nothing is damaged: a damaged version newer than every readable one
        could have been the head (callers check ``damaged`` first)."""
        last = self.last
        if last is None or last.manifest is None:
            return None
        return RefEntry(self.ref, last.seq, last.manifest, last.previous, last.at)


def file_name(seq: int) -> str:
    return f"{seq:0{SEQ_WIDTH}d}.json"


def seq_of(name: str) -> int | None:
    """The version number of a version file name; None for anything else (temp files and strays)."""
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def parse_version(seq: int, data: bytes) -> RefVersion:
    """A version file's body, or ValueError saying what is wrong with it."""
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    manifest = body.get("manifest")
    previous = body.get("previous")
    drops = body.get("drops", [])
    if manifest is not None:
        check_id(manifest)
    elif not drops:
        raise ValueError("no manifest")
    if previous is not None:
        check_id(previous, "previous manifest id")
    if not isinstance(drops, list) or not all(isinstance(d, int) and 0 < d < seq for d in drops):
        raise ValueError("'drops' must list earlier version numbers")
    at = body.get("at")
    if not isinstance(at, str):
        raise ValueError("no 'at' time")
    return RefVersion(seq, manifest, previous, at, tuple(drops), str(body.get("reason", "")))


def read_state(backend, ref: str, versions: dict[int, str]) -> RefState:
    """The state of ``ref`` read from its version files (seq -> path under ``backend``); a file that
    vanished between listing and reading counts as damage of that version, not as an error."""
    data: dict[int, bytes | Exception] = {}
    for seq, rel in versions.items():
        try:
            data[seq] = backend.read_bytes(rel)
        except FileNotFoundError as exc:
            data[seq] = exc
    return state(ref, data)


def state(ref: str, files: dict[int, bytes | Exception]) -> RefState:
    """The state of ``ref`` from its version files (seq -> bytes, or the error reading one)."""
    versions: list[RefVersion] = []
    problems: dict[int, str] = {}
    for seq in sorted(files):
        data = files[seq]
        if isinstance(data, Exception):
            problems[seq] = str(data)
            continue
        try:
            versions.append(parse_version(seq, data))
        except (ValueError, UnicodeDecodeError) as exc:
            problems[seq] = " ".join(str(exc).split())[:200]
    dropped = frozenset(d for v in versions for d in v.drops)
    damaged = {seq: p for seq, p in problems.items() if seq not in dropped}
    return RefState(ref, versions, damaged, dropped)


def version_body(manifest: str | None, previous: str | None, at: str, drops=(), reason: str = "") -> bytes:
    body: dict = {"manifest": manifest, "previous": previous, "at": at}
    if drops:
        body["drops"] = sorted(drops)
        body["reason"] = reason
    return json.dumps(body).encode()
