"""The pipeline's shape comes from the stages' declarations (``@declare`` on each flow)."""

from __future__ import annotations

import pytest
from prefect import flow

from m3.stage import declare, pipeline_order


def _stage(name: str, kind: str, needs=(), reads=()):
    @declare(kind, needs=needs, reads=reads)
    @flow(name=name)
    def stage_flow() -> None:
        return None

    return stage_flow


def test_the_pipeline_order_and_inputs_come_from_the_declarations():
    from flows.pipeline import STAGE_NAMES, STAGES

    assert STAGE_NAMES == ("ingest", "synthesize", "pretrain", "mine", "finetune", "evaluate")
    by_name = {s.name: s for s in STAGES}
    # A checkpoint teacher mines with this run's checkpoint: the pipeline hands it over.
    assert "checkpoint" in by_name["mine"].inputs
    made = set()
    for st in STAGES:
        assert set(st.needs) <= made, st.name
        made.add(st.kind)


def test_order_follows_inputs_not_the_listing():
    a, b, c = _stage("a", "x"), _stage("b", "y", needs=("z",)), _stage("c", "z", reads=("x",))
    assert [s.name for s in pipeline_order([b, c, a])] == ["a", "c", "b"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (lambda: [_stage("a", "x", needs=("nothing",))], "which no stage makes"),
        (lambda: [_stage("a", "x"), _stage("b", "x")], "both make"),
        (lambda: [_stage("a", "x", needs=("y",)), _stage("b", "y", needs=("x",))], "depend on each other"),
    ],
)
def test_declaration_errors(stages, message):
    with pytest.raises(ValueError, match=message):
        pipeline_order(stages())
