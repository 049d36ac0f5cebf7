"""Validation of names and paths that come from users and configs.

Everything that becomes part of a store path goes through here, so a ref such as
``../../etc/passwd`` or a file path such as ``/abs`` can never escape the store root.
"""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class InvalidName(ValueError):
    """A ref, kind or artifact path that is not allowed in the store."""


def validate_segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value) or value in {".", ".."}:
        raise InvalidName(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


def validate_ref(ref: str) -> str:
    """A ref is ``KIND/NAME`` (e.g. ``corpus/demo``, ``model/champion``)."""
    if not isinstance(ref, str) or ref.count("/") != 1:
        raise InvalidName(f"invalid ref {ref!r}: expected KIND/NAME, e.g. corpus/demo")
    kind, name = ref.split("/")
    validate_segment(kind, "ref kind")
    validate_segment(name, "ref name")
    return ref


def validate_relpath(path: str) -> str:
    """A file path inside an artifact: relative, forward slashes, no '..' or empty parts."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise InvalidName(f"invalid artifact file path {path!r}: must be a relative POSIX path")
    for part in path.split("/"):
        if part in {"", ".", ".."}:
            raise InvalidName(f"invalid artifact file path {path!r}: no empty, '.' or '..' parts")
        if len(part) > 255:
            raise InvalidName(f"invalid artifact file path {path!r}: a part is longer than 255 characters")
    return path


def is_manifest_id(value: str) -> bool:
    """A full or abbreviated (>= 8 hex digits) manifest id, optionally prefixed ``sha256:``."""
    return bool(_HEX.match(value.removeprefix("sha256:")))
