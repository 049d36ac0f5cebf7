"""Opening a run's environment: the profile file read, the store it names (or the one given) opened."""

from __future__ import annotations

import os

from m3.app.profile import Profile, load_profile
from m3.cachedir import default_cache_dir
from m3.stage_env import StageEnv
from m3.store import Store

DEFAULT_STORE = ".m3/store"


def resolve_store_url(profile: Profile, store: str | None) -> str:
    """``--store``, else the profile's ``store``, else ``$M3_STORE``, else ``.m3/store``."""
    return store or profile.store or os.environ.get("M3_STORE") or DEFAULT_STORE


def open_env(profile: str, store: str | None) -> StageEnv[Profile]:
    prof = load_profile(profile)
    return StageEnv(prof, Store(resolve_store_url(prof, store), cache_dir=default_cache_dir()))
