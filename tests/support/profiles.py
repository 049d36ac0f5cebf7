"""The tiny test profile, renamed and edited for one end-to-end case."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.paths import REPO, TINY


def tiny_profile_data(name: str) -> dict:
    """The tiny profile as a dict, named ``name``, reading its data from the repository."""
    data = yaml.safe_load(Path(TINY).read_text())
    data.update(base_dir=str(REPO), name=name)
    return data


def write_profile(folder: Path, data: dict) -> Path:
    """``data`` written as ``<folder>/<name>.yaml``, the path ``m3 run --profile`` takes."""
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
