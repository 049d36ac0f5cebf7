"""Where the tests find the repository, the shared real data and the tiny profile."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = str(REPO / "tests" / "profiles" / "tiny.yaml")
