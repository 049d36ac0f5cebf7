"""False-negative masking (a column holding the query's own positive passage is not a negative) and
the sparse-collapse record (share of tokens with a positive lexical weight)."""

from __future__ import annotations

import json
import logging
import math
import random

import pytest
import torch

from model.losses import (
    false_negative_mask,
    info_nce_from_scores,
    masked_logits,
    self_distill,
    teacher_distill,
    unified_loss,
)
from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample, train
from tasks.training.data import TokenizedSet, passage_key
from tasks.training.unified_step import sparse_activity
from tests.support.losses import cross_entropy, soft_cross_entropy
from tests.support.models import ALL, SPEC, train_config
from tests.support.text import PAIRS

W = {"dense": 1.0, "sparse": 0.3, "multivec": 1.0}
LAM = {"dense": 1.0, "sparse": 0.1, "multivec": 1.0}

# 3 queries x group 2, columns laid out [pos, neg] per query. Passage texts per column:
#   q0: A, B   q1: A, D   q2: D, A
# q1's positive duplicates q0's (two questions of one passage); q1's hard negative D is q2's positive;
# q2's hard negative A is q0's and q1's positive.
N, G, TAU = 3, 2, 0.5
KEYS = ["A", "B", "A", "D", "D", "A"]
MASKED = {0: {2, 5}, 1: {0, 5}, 2: {3}}  # row -> columns holding its positive's passage, not its label


def keys_tensor(keys: list[str]) -> torch.Tensor:
    return torch.tensor([ord(k) for k in keys], dtype=torch.int64)


def random_scores(seed: int = 5) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    return {f: torch.tensor([[rng.uniform(-1, 1) for _ in range(N * G)] for _ in range(N)]) for f in ALL}


def hand_unified(s: dict[str, torch.Tensor], drop: dict[int, set[int]]) -> dict[str, float]:
    """The paper's L, L' and L_final (arXiv 2402.03216 eq. 5-8) with the ``drop`` columns removed
    from each row before any softmax."""
    rows = {f: s[f].tolist() for f in ALL}
    inter = [[sum(W[f] * rows[f][i][j] for f in ALL) for j in range(N * G)] for i in range(N)]

    def kept(row: list[float], i: int) -> tuple[list[float], int]:
        cols = [j for j in range(N * G) if j not in drop.get(i, set())]
        return [row[j] / TAU for j in cols], cols.index(i * G)

    def nce(m):
        return sum(cross_entropy(*kept(m[i], i)) for i in range(N)) / N

    def distill(m):
        return sum(soft_cross_entropy(kept(m[i], i)[0], kept(inter[i], i)[0]) for i in range(N)) / N

    out = {f: nce(rows[f]) for f in ALL}
    out["inter"] = nce(inter)
    out["L"] = (sum(LAM[f] * out[f] for f in ALL) + out["inter"]) / 4
    out["L_prime"] = sum(LAM[f] * distill(rows[f]) for f in ALL) / 3
    out["loss"] = (out["L"] + out["L_prime"]) / 2
    return out


def test_mask_marks_the_positive_passage_elsewhere_in_the_batch():
    mask = false_negative_mask(keys_tensor(KEYS), N, G)
    expected = torch.zeros(N, N * G, dtype=torch.bool)
    for i, cols in MASKED.items():
        expected[i, list(cols)] = True
    assert torch.equal(mask, expected)
    # rows of a later rank (query_offset) get the same rows of the full-batch mask
    assert torch.equal(false_negative_mask(keys_tensor(KEYS), 2, G, query_offset=1), expected[1:])
    # distinct passages: nothing masked
    assert not false_negative_mask(torch.arange(N * G), N, G).any()


def test_masked_unified_loss_equals_hand_computation_without_the_masked_columns():
    s = random_scores()
    mask = false_negative_mask(keys_tensor(KEYS), N, G)
    want = hand_unified(s, MASKED)
    got = unified_loss(s, TAU, G, mask=mask)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5), key
    # the columns matter: unmasked, the loss is the plain one, which differs; mask=None is that one
    plain = hand_unified(s, {})
    unmasked = unified_loss(s, TAU, G)
    assert unmasked["loss"].item() == pytest.approx(plain["loss"], rel=1e-5)
    assert abs(unmasked["loss"].item() - got["loss"].item()) > 1e-3
    for f in (*ALL, "inter"):
        assert abs(unmasked[f].item() - got[f].item()) > 1e-4, f
    assert info_nce_from_scores(s["dense"], TAU, G, mask=mask).item() == pytest.approx(
        want["dense"], rel=1e-5
    )


def test_masked_columns_get_no_gradient_and_no_nan_even_for_extreme_scores():
    mask = false_negative_mask(keys_tensor(KEYS), N, G)
    for scale in (1.0, 1e3):  # 1e3 / τ: logits of thousands
        s = {f: (v * scale).requires_grad_(True) for f, v in random_scores(7).items()}
        out = unified_loss(s, TAU, G, mask=mask)
        assert all(torch.isfinite(v).all() for v in out.values())
        out["loss"].backward()
        for f in ALL:
            assert torch.isfinite(s[f].grad).all(), f
            assert torch.equal(s[f].grad[mask], torch.zeros(int(mask.sum()))), f


def test_self_distill_teacher_gives_masked_columns_zero_probability():
    s = random_scores(11)
    mask = false_negative_mask(keys_tensor(KEYS), N, G)
    teacher = sum(W[f] * s[f] for f in ALL) / TAU
    probs = torch.softmax(masked_logits(teacher, mask), dim=-1)
    assert torch.equal(probs[mask], torch.zeros(int(mask.sum())))
    assert torch.allclose(probs.sum(-1), torch.ones(N))
    student = (s["dense"] / TAU).requires_grad_(True)
    loss = self_distill(student, teacher, mask)
    hand = 0.0
    for i in range(N):
        cols = [j for j in range(N * G) if j not in MASKED[i]]
        hand += soft_cross_entropy([student[i, j].item() for j in cols], [teacher[i, j].item() for j in cols])
    assert loss.item() == pytest.approx(hand / N, rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and not student.grad[mask].any()


def test_teacher_distillation_ignores_a_hard_negative_equal_to_the_positive():
    # 2 queries x group 3: q0 = [A, B, A] (its second hard negative is its positive), q1 = [C, D, E]
    keys = keys_tensor(["A", "B", "A", "C", "D", "E"])
    mask = false_negative_mask(keys, 2, 3)
    student = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.0, -0.3], [0.1, 0.4, 0.0, 0.7, 0.2, 0.3]])
    teacher = torch.tensor([[2.0, 0.5, 1.5], [1.0, 0.2, 0.1]])
    tau, t_tau = 0.5, 1.0
    got = teacher_distill(student, teacher, tau, 3, t_tau, column_mask=mask)
    hand = soft_cross_entropy([0.9 / tau, 0.1 / tau], [2.0, 0.5])  # q0 without column 2
    hand += soft_cross_entropy([x / tau for x in (0.7, 0.2, 0.3)], [1.0, 0.2, 0.1])  # q1: columns 3..5
    assert got.item() == pytest.approx(hand / 2, rel=1e-5)
    assert teacher_distill(student, teacher, tau, 3, t_tau).item() != pytest.approx(hand / 2, rel=1e-3)


def test_passage_keys_identify_the_text_as_tokenized():
    assert passage_key([0, 5, 7, 2]) == passage_key([0, 5, 7, 2]) != passage_key([0, 5, 8, 2])
    assert 0 <= passage_key(list(range(300))) < 2**63

    def tokenize(texts, _max_len):
        return [[ord(c) for c in t[:4]] for t in texts]  # truncates to 4 characters

    exs = [TrainExample(query="q1", pos="abcd", negs=["abcdXX", "zz"]), TrainExample(query="q2", pos="zz")]
    data = TokenizedSet.build(exs, tokenize, 8, 8)
    assert len(data.passages) == 3  # distinct strings
    keys = [data.key(j) for j in range(3)]
    assert keys[0] == keys[1] != keys[2]  # "abcdXX" truncates to the positive's input: same passage


def test_sparse_activity_counts_distinct_real_tokens():
    special = torch.tensor([0, 1, 2])  # <s>, <pad>, </s>
    ids = torch.tensor([[0, 5, 6, 5, 2, 1], [0, 7, 7, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    # the model's output: a repeated token's weight at its first position only, specials 0
    weights = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0, 0.0, 0.0]])
    active, tokens = sparse_activity(weights, ids, mask, special)
    assert (int(active), int(tokens)) == (2, 3)  # row 0: 5 active, 6 dead; row 1: 7 active
    active, _ = sparse_activity(torch.zeros_like(weights), ids, mask, special)
    assert int(active) == 0


# ---------------------------------------------------------------------------------------- train()
def duplicate_examples(k: int = 16) -> list[TrainExample]:
    """Two questions per passage (the same positive twice in the set) and a hard negative that is
    the next passage's positive: batches hold duplicate positives and positive-equal negatives."""
    exs = []
    for i in range(k // 2):
        q1, p = PAIRS[i]
        q2 = PAIRS[i][1].split(".")[1].strip() or q1
        nxt = PAIRS[(i + 1) % (k // 2)][1]
        exs += [TrainExample(query=q1, pos=p, negs=[nxt]), TrainExample(query=q2, pos=p, negs=[nxt])]
    return exs


def cfg(**kw) -> TrainConfig:
    shape = {"group_size": 2, "max_length": 96, "device": "cpu", "group_by_length": False}
    return train_config(**{**shape, **kw})


def test_train_masks_duplicate_positives_and_records_sparse_activity(pairs_tok_dir, caplog):
    exs = duplicate_examples(16)
    runs = {}
    for name, kw in {
        "plain": {},
        "cached": {"sub_batch_size": 5},
        "off": {"mask_false_negatives": False},
    }.items():
        records: list[dict] = []
        model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
        with caplog.at_level(logging.WARNING, logger="tasks.training.sparse_watch"):
            caplog.clear()
            summary = train(model, exs, cfg(max_steps=2, **kw), on_progress=records.append)
        assert "COLLAPSED" not in caplog.text
        json.loads(json.dumps(records))  # what the torchrun workers send back: plain JSON
        assert all(isinstance(r["masked_negatives"], int) for r in records)
        assert all(math.isfinite(r["loss"]) for r in records)
        assert summary["masked_negatives"] == sum(r["masked_negatives"] for r in records)
        assert all(0.0 < r["sparse_active"] <= 1.0 for r in records)
        assert summary["sparse_collapsed"] is False
        assert summary["sparse_active_first"] == records[0]["sparse_active"]
        assert summary["sparse_active_last"] == records[-1]["sparse_active"]
        runs[name] = records
    assert all(r["masked_negatives"] > 0 for r in runs["plain"])
    assert [r["masked_negatives"] for r in runs["cached"]] == [r["masked_negatives"] for r in runs["plain"]]
    assert all(r["masked_negatives"] == 0 for r in runs["off"])
    # same first step: gradient caching sees the same reps; masking changes the loss, not the reps
    first = runs["plain"][0]
    assert runs["cached"][0]["sparse_active"] == pytest.approx(first["sparse_active"], abs=1e-6)
    assert runs["cached"][0]["loss"] == pytest.approx(first["loss"], rel=1e-4)
    assert runs["off"][0]["sparse_active"] == pytest.approx(first["sparse_active"], abs=1e-6)
    assert runs["off"][0]["loss"] != pytest.approx(first["loss"], rel=1e-3)


def test_dead_sparse_head_is_reported_as_collapsed(pairs_tok_dir, caplog):
    exs = duplicate_examples(16)
    for sub in (None, 5):
        model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
        with torch.no_grad():
            model.sparse_linear.bias.fill_(-1e4)  # ReLU(w·h + b) = 0 everywhere: no gradient either
        records: list[dict] = []
        with caplog.at_level(logging.WARNING, logger="tasks.training.sparse_watch"):
            caplog.clear()
            summary = train(
                model,
                exs,
                cfg(max_steps=2, sub_batch_size=sub, sparse_revive_below=0),
                on_progress=records.append,
            )
        assert [r["sparse_active"] for r in records] == [0.0, 0.0]
        assert summary["sparse_active_first"] == 0.0 and summary["sparse_active_last"] == 0.0
        assert summary["sparse_collapsed"] is True
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "COLLAPSED" in r.message]
        assert len(warnings) == 2  # when the running share first drops under the threshold, and at the end
        assert math.isfinite(summary["final_loss"])


def test_dense_only_training_has_no_sparse_record(pairs_tok_dir):
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    records: list[dict] = []
    summary = train(
        model, duplicate_examples(16), cfg(functions=["dense"], max_steps=1), on_progress=records.append
    )
    assert "sparse_active" not in records[0] and records[0]["masked_negatives"] > 0
    assert summary["sparse_collapsed"] is None and summary["sparse_active_last"] is None


def test_a_sparse_head_that_starts_dead_is_revived_before_the_first_step(pairs_tok_dir, caplog):
    """The default: a dead-at-start head gets a data-dependent bias, so the function can learn."""
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    with torch.no_grad():
        model.sparse_linear.bias.fill_(-5.0)
    records: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="tasks.training.sparse_init"):
        summary = train(model, duplicate_examples(16), cfg(max_steps=2), on_progress=records.append)
    assert summary["sparse_revived"]["share_before"] < 0.25
    assert summary["sparse_revived"]["bias_shift"] > 4.0
    assert all(r["sparse_active"] > 0.2 for r in records) and summary["sparse_collapsed"] is False
    assert "starts dead" in caplog.text
    alive = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")  # an alive head is left as it is
    assert train(alive, duplicate_examples(16), cfg(max_steps=1))["sparse_revived"] is None


def test_new_heads_can_learn_faster_than_the_backbone(pairs_tok_dir):
    from tasks.training.optim import param_groups

    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    groups = param_groups(model.named_parameters(), 0.01, 2e-5, ("sparse_linear.", "colbert_linear."), 20.0)
    fast = [g for g in groups if "lr" in g]
    head_params = {id(p) for m in (model.sparse_linear, model.colbert_linear) for p in m.parameters()}
    assert {id(p) for g in fast for p in g["params"]} == head_params
    assert all(g["lr"] == pytest.approx(4e-4) for g in fast)
    plain = param_groups(model.named_parameters(), 0.01)  # scale 1: the two groups as before
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0] and all("lr" not in g for g in plain)
    before = model.sparse_linear.weight.detach().clone()
    train(model, duplicate_examples(16), cfg(max_steps=1, lr=1e-6, head_lr_scale=1000.0))
    assert (model.sparse_linear.weight - before).abs().max() > 1e-4  # moved at ~1e-3, not 1e-6
