"""The one base of every config model (docs/architecture.md, "Configs")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: a key it does not know is an error, never ignored. Without this a typo in
    a profile (``finetune: {lerning_rate: 1e-5}``) would run silently with the default; the profile
    loader turns the error into one line naming the key and the nearest valid one."""

    model_config = ConfigDict(extra="forbid")
