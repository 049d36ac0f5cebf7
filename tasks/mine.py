"""Transitional: the names ``tasks/evaluate.py`` and ``tasks/retrieval.py`` still import from here.

The mining stage lives in ``tasks/mining`` (issue 16). Delete this file once those two modules import
``MineConfig`` from ``tasks.mining.config``, ``build_bm25`` from ``tasks.mining.bm25`` and call
``m3.topk.topk(ids, scores, k, positive=True)`` instead of ``topk_sorted``.
"""

from __future__ import annotations

import functools

from m3.topk import topk
from tasks.mining.bm25 import build_bm25
from tasks.mining.config import MineConfig

topk_sorted = functools.partial(topk, positive=True)

__all__ = ["MineConfig", "build_bm25", "topk_sorted"]
