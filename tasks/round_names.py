"""The names of what one ANCE round makes: mining writes them, training and the preflight read them.

Round k's ``train-set`` / ``model`` carry :func:`round_name`; a dense teacher's vectors are
``embeddings/<round name>-<role>``, one per role.
"""

from __future__ import annotations

PASSAGES, QUERIES = "passages", "queries"  # the embedding roles: the pool and the training queries


def round_name(profile: str, round: int, rounds: int) -> str:
    """Artifact name of one ANCE round's output: the profile's name with one round, else ``-r<k>``."""
    return profile if rounds == 1 else f"{profile}-r{round}"
