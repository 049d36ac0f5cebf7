"""Where this machine keeps what can be rebuilt: materialized store artifacts and imported models."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$M3_CACHE_DIR``, else ``~/.cache/m3``."""
    return Path(os.environ.get("M3_CACHE_DIR", Path.home() / ".cache" / "m3")).expanduser()
