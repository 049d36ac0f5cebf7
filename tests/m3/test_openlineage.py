"""OpenLineage run events per stage: off by default, file or HTTP transport, valid against the spec.

Valid means: accepted by the OpenLineage Python client's own model of the spec. openlineage-python
ships no JSON schema file, but its ``openlineage.client.event_v2`` / ``facet_v2`` classes are
generated from the spec's JSON schemas (``OpenLineage.json`` 2-0-2 and each facet's schema). So
each JSON event is structured back into those attrs classes, strictly, and must serialize back to
the same JSON with the client's ``Serde`` (see :func:`tests.support.openlineage.parse_event`).
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openlineage.client.facet_v2 import parent_run

from m3 import openlineage
from m3.stage import StageFailed, StageOutput, StageSpec, run_stage
from m3.store import Store
from tests.support.openlineage import InvalidEvent, parse_event, validate_event

FLOW_RUN = str(uuid.uuid4())


def _store_with_source(tmp_path: Path) -> tuple[Store, str]:
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    raw = tmp_path / "raw.txt"
    raw.write_text("raw bytes")
    return store, store.commit("source", "t.raw", {"raw.txt": raw}, ref="source/t.raw").id


def _build(scratch: Path) -> StageOutput:
    (scratch / "out.txt").write_text("built")
    return StageOutput({"out.txt": scratch / "out.txt"}, {"docs": 1}, rows={"out.txt": 1})


def _run_stages(store: Store, source: str) -> str:
    """One built stage, the same again (a cache hit), then a stage whose build fails on its input."""
    spec = StageSpec("ingest", "corpus", "t", {"source:raw": source}, {"min_chars": 1}, ("m3.stage",))
    built = run_stage(store, spec, _build, flow="ingest", flow_run_id=FLOW_RUN)
    again = run_stage(store, spec, _build, flow="ingest", flow_run_id=FLOW_RUN)
    assert again.cached
    bad = StageSpec("mine", "train-set", "t", {"queries": built.manifest_id}, {}, ("m3.stage",))

    def corrupt(_: Path) -> StageOutput:
        raise ValueError("Parquet magic bytes not found in footer")

    with pytest.raises(StageFailed):
        run_stage(store, bad, corrupt, flow="mine", flow_run_id=FLOW_RUN)
    return built.manifest_id


def test_events_are_off_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(openlineage.ENV, raising=False)
    monkeypatch.setattr(openlineage, "_clients", {})
    monkeypatch.chdir(tmp_path)
    store, source = _store_with_source(tmp_path)
    _run_stages(store, source)
    assert not openlineage.enabled()
    assert openlineage._clients == {}  # no client, so no transport, was ever made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.txt", "store"]


def test_file_transport_writes_valid_start_complete_and_fail_events(tmp_path, monkeypatch):
    events_file = tmp_path / "ol" / "events.jsonl"
    monkeypatch.setenv(openlineage.ENV, f"file:{events_file}")
    store, source = _store_with_source(tmp_path)
    corpus_id = _run_stages(store, source)

    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    for event in events:
        validate_event(event)
    # built stage: START + COMPLETE; the cache hit emits nothing; the failing stage START + FAIL
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("ingest", "START"),
        ("ingest", "COMPLETE"),
        ("mine", "START"),
        ("mine", "FAIL"),
    ]
    ns = "file://" + str(tmp_path / "store")
    start, complete, _, fail = events
    assert start["run"]["runId"] == complete["run"]["runId"] != fail["run"]["runId"]
    assert complete["inputs"][0]["namespace"] == ns and complete["inputs"][0]["name"] == "source/t.raw"
    assert complete["inputs"][0]["facets"]["version"]["datasetVersion"] == source
    out = complete["outputs"][0]
    assert (out["namespace"], out["name"]) == (ns, "corpus/t")
    assert out["facets"]["version"]["datasetVersion"] == corpus_id
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 1
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == FLOW_RUN
    assert fail["inputs"][0]["name"] == "corpus/t"
    message = fail["run"]["facets"]["errorMessage"]["message"]
    assert "train-set/t" in message and "queries=corpus/t" in message and "Parquet magic bytes" in message


def test_http_transport_posts_the_same_events_to_a_lineage_api(tmp_path, monkeypatch):
    received: list[tuple[str, dict]] = []

    class Lineage(BaseHTTPRequestHandler):  # what Marquez exposes: POST /api/v1/lineage
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Lineage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(openlineage.ENV, f"http://127.0.0.1:{server.server_address[1]}")
        store, source = _store_with_source(tmp_path)
        _run_stages(store, source)
    finally:
        server.shutdown()
        server.server_close()
    assert [p for p, _ in received] == ["/api/v1/lineage"] * 4
    assert [e["eventType"] for _, e in received] == ["START", "COMPLETE", "START", "FAIL"]
    for _, event in received:
        validate_event(event)


def test_schema_rejects_what_the_spec_forbids():
    """The validator is not vacuous: what the spec forbids fails, in the core and in the facets."""
    good = {
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": openlineage.PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "eventType": "START",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "m3", "name": "ingest"},
    }
    validate_event(good)
    facet = {"_producer": openlineage.PRODUCER}
    spec = "https://openlineage.io/spec/facets"
    version = {
        **facet,
        "_schemaURL": f"{spec}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
        "datasetVersion": "1",
    }
    stats = {
        **facet,
        "_schemaURL": f"{spec}/1-0-2/OutputStatisticsOutputDatasetFacet.json"
        "#/$defs/OutputStatisticsOutputDatasetFacet",
        "rowCount": 10,
    }
    parent = {
        **facet,
        "_schemaURL": f"{spec}/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "prefect", "name": "pipeline"},
    }
    output = {"namespace": "x", "name": "y", "facets": {"version": version}}
    full = {
        **good,
        "run": {"runId": str(uuid.uuid4()), "facets": {"parent": parent}},
        "outputs": [{**output, "outputFacets": {"outputStatistics": stats}}],
    }
    parsed = parse_event(full)  # the client's own classes, facets included
    assert isinstance(parsed.run.facets["parent"], parent_run.ParentRunFacet)
    assert parsed.outputs[0].facets["version"].datasetVersion == "1"
    for broken in (
        {**good, "run": {"runId": "not-a-uuid"}},
        {k: v for k, v in good.items() if k != "job"},
        {**good, "eventType": "DONE"},
        {
            **good,
            "outputs": [{"namespace": "x", "name": "y", "facets": {"version": {"datasetVersion": "1"}}}],
        },
        {**good, "eventTime": "2026-01-01T00:00:00"},  # no UTC offset: not RFC 3339
        {**good, "eventTime": "yesterday"},
        {**good, "producer": "m3 stage runner"},  # not a URI
        {**good, "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent"},
        {**good, "job": {"namespace": "m3", "name": "ingest", "owner": "me"}},  # not in the spec's Job
        {**good, "run": {"runId": str(uuid.uuid4()), "facets": {"version": version}}},  # a dataset facet
        {**good, "run": {"runId": str(uuid.uuid4()), "facets": {"parent": {**parent, "run": {}}}}},
        {**good, "outputs": [{**output, "outputFacets": {"outputStatistics": {**stats, "rowCount": "10"}}}]},
        {**good, "outputs": [{**output, "outputFacets": {"outputStatistics": {**stats, "rows": 10}}}]},
        {**good, "inputs": [{"namespace": "x"}]},  # a dataset without a name
    ):
        with pytest.raises(InvalidEvent):
            validate_event(broken)
