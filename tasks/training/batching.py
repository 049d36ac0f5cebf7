"""Which examples go into each step, and which negatives each query gets.

Length grouping follows the paper (arXiv 2402.03216 §3.4): examples are split into length groups and
every batch is drawn from one group, so little compute goes to padding; with a token budget a group
of longer texts gets fewer queries per batch. Everything is a pure function of (seed, epoch, batch
index), so a resumed run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from tasks.training.config import TrainConfig
from tasks.training.data import TokenizedSet


def _rng(*key: int) -> random.Random:
    return random.Random("/".join(map(str, key)))  # str seeds are hashed with SHA-512: stable across runs


def batch_size_for(bound: int, cfg: TrainConfig, q_len: int) -> int:
    """Queries per global batch for a length group whose texts have at most ``bound`` tokens."""
    n = cfg.batch_size
    if cfg.token_budget:
        per_query = min(bound, q_len) + cfg.group_size * bound
        n = min(n, cfg.token_budget // per_query)
    return max(n, 2)  # a query needs another query's passages as in-batch negatives


def plan_epoch(data: TokenizedSet, cfg: TrainConfig, epoch: int, world_size: int = 1) -> list[list[int]]:
    """The global batches of one epoch, in step order.

    The plan is made as for one process and then each batch is cut to a multiple of ``world_size``
    queries (one rank's share each), so ``torchrun`` with N processes trains on the same batches, in
    the same order and with the same negatives (drawn by batch index), as one process: only the
    last ``len % N`` queries of a batch are left out. A batch left with fewer than 2 queries (or N)
    is dropped: a query needs another query's passages as in-batch negatives. (With N > 2 that can
    happen to a short batch, and the batches after it then draw the negatives of the next index.)"""
    batches = [b[: len(b) - len(b) % world_size] for b in _plan_one_process(data, cfg, epoch)]
    return [b for b in batches if len(b) >= max(2, world_size)]


def _plan_one_process(data: TokenizedSet, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    rng = _rng(cfg.seed, epoch, 0)
    order = list(range(len(data)))
    rng.shuffle(order)
    if not cfg.group_by_length:
        n = batch_size_for(cfg.max_length, cfg, cfg.q_max_length)
        batches = [order[s : s + n] for s in range(0, len(order), n)]
    else:
        groups: dict[int, list[int]] = {}
        for i in order:
            g = bisect.bisect_left(cfg.length_buckets, data.length(i))
            groups.setdefault(min(g, len(cfg.length_buckets) - 1), []).append(i)
        batches = []
        for g in sorted(groups):
            members = groups[g]
            n = batch_size_for(cfg.length_buckets[g], cfg, cfg.q_max_length)
            mega = n * cfg.length_group_batches
            for s in range(0, len(members), mega):  # sort inside a megabatch: neighbours share a length
                chunk = sorted(members[s : s + mega], key=data.length)
                batches.extend(chunk[t : t + n] for t in range(0, len(chunk), n))
    batches = [b for b in batches if len(b) >= 2]
    rng.shuffle(batches)
    return batches


@dataclass
class Group:
    """One query's passages ``[pos, neg_1..neg_k]`` and teacher scores (None when not known)."""

    passages: list[int]
    teacher: list[float] | None
    filled: int = 0


def sample_group(data: TokenizedSet, i: int, group_size: int, rng: random.Random) -> Group:
    """``group_size - 1`` negatives for example ``i``: its own hard negatives (sampled; repeated if too
    few, as FlagEmbedding does), else other examples' positives (then no teacher scores)."""
    k = group_size - 1
    pos = data.pos[i]
    teacher = data.teacher[i]
    if k == 0:
        return Group([pos], [teacher[0]] if teacher else None)
    own = data.negs[i]
    if own:
        pool = list(range(len(own))) * math.ceil(k / len(own))
        picks = [pool[j] for j in rng.sample(range(len(pool)), k)]
        scores = [teacher[0], *(teacher[1][j] for j in picks)] if teacher else None
        return Group([pos, *(own[j] for j in picks)], scores)
    others = [j for j in rng.sample(range(len(data)), min(len(data), k + 1)) if j != i][:k]
    while len(others) < k:  # tiny sets
        others.append(rng.randrange(len(data)))
    return Group([pos, *(data.pos[j] for j in others)], None, filled=k)


def batch_rng(cfg: TrainConfig, epoch: int, batch_index: int) -> random.Random:
    """The negatives' sampler for one batch: positional, so resuming needs no sampler state."""
    return _rng(cfg.seed, epoch, batch_index + 1)
