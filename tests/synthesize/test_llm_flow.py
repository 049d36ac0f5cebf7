"""The ``openai`` backend through ``m3 run`` as a user runs it: a profile naming a Prefect Secret
block, real Prefect flows, the store; a budget that stops the stage early, recorded in the manifest.

Slow: it runs ingest + synthesize as real flows against the session's Prefect API server.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from m3.store import Store
from tests.support.llm import (
    KEY,
    WIKICLEAN,
    ChatServer,
    assert_key_nowhere,
    doc_of,
    good_questions,
    wiki_corpus,
)
from tests.support.m3_process import m3_subprocess_env, run_m3

pytestmark = pytest.mark.slow


PROFILE = """
name: llmtest
sources:
  - name: wikipedia
    format: mediawiki
    paths: ["{wiki}/*wiki-*.xml"]
dask: {{n_workers: 1, threads_per_worker: 2}}  # one worker process to start, not two
synthesize:
  heldout_fraction: 0.3
  backend: openai
  openai:
    base_url: {url}
    model: test-model
    api_key_env: null
    api_key_secret: m3-test-llm-key
    timeout_s: 5
    concurrency: 3
    selection: {{languages: [en, de, fr, es, ru, zh], min_doc_chars: 2000}}
    budget: {{max_requests: {cap}, price_input_per_mtok: 0.15, price_output_per_mtok: 0.6}}
"""


def test_flow_with_secret_block_budget_and_no_key_anywhere(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    corpus = wiki_corpus()
    api_url = prefect_server["url"]  # the session's API server: the Secret block lives there
    env = m3_subprocess_env(tmp_path, api_url)
    store_dir = tmp_path / "store"
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        ChatServer(lambda b, n: ("ok", good_questions(doc_of(b, corpus)))) as srv,
    ):
        from prefect.blocks.system import Secret

        Secret(value=KEY).save("m3-test-llm-key", overwrite=True)
        runs = []
        for cap in (3, 1000):
            profile = tmp_path / f"llm{cap}.yaml"
            profile.write_text(PROFILE.format(wiki=WIKICLEAN, url=srv.base_url, cap=cap))
            args = ["run", "--profile", str(profile), "--store", str(store_dir)]
            args += ["--only", "ingest", "--only", "synthesize", "--json"]
            proc = run_m3(args, env, timeout=600)
            runs.append(proc)
            assert KEY not in proc.stdout + proc.stderr
        logs_and_artifacts = asyncio.run(_prefect_texts())

    assert all(r["auth"] == f"Bearer {KEY}" for r in srv.requests)  # the key did reach the server
    store = Store(str(store_dir))
    history = store.ref_history("queries/llmtest")
    first, second = (store.manifest(h.manifest) for h in history[-2:])
    assert first.metrics["stopped_early"] is True and first.metrics["stop_reason"] == "max_requests"
    assert first.metrics["requests_sent"] == 3 and first.metrics["docs_with_questions"] == 3
    assert {f.path for f in first.files} >= {"failures.jsonl", "dropped.jsonl"}
    failures = [
        json.loads(x) for x in store.read_file_bytes(first.id, "failures.jsonl").decode().splitlines()
    ]
    assert len(failures) == first.metrics["docs_selected"] - 3
    assert {f["reason"] for f in failures} == {"budget_exhausted"}
    # A bigger budget is a new stage config; the three paid replies come from the store.
    assert second.metrics["stopped_early"] is False and second.metrics["cache_hits"] == 3
    assert second.metrics["requests_sent"] == second.metrics["passages"] - 3 == len(srv.requests) - 3
    assert second.producer.config["openai"]["api_key_secret"] == "m3-test-llm-key"
    assert second.metrics["usage"]["estimated_cost_usd"] > 0
    # The positives are whole documents (MultiLongDoc), recorded per row and in the manifest.
    kept = second.metrics["questions_kept"]
    assert second.metrics["pairing"] == "document"
    assert second.metrics["queries_per_pairing"] == {"document": kept, "passage": 0}
    assert sum(second.metrics["queries_per_length_bucket"].values()) == kept
    assert {"pairing", "length_bucket"} <= set(second.schema_["columns"])
    assert_key_nowhere(store_dir)
    assert "m3-synthesize-llmtest" in logs_and_artifacts
    assert KEY not in logs_and_artifacts


async def _prefect_texts() -> str:
    """Every log line and artifact the Prefect API holds, as one text (all pages: the server is the
    session's, so it holds other tests' runs too)."""
    from prefect.client.orchestration import get_client

    async def every(read) -> list:
        out, page = [], 200
        while True:
            got = await read(limit=page, offset=len(out))
            out.extend(got)
            if len(got) < page:
                return out

    async with get_client() as client:
        logs = await every(client.read_logs)
        artifacts = await every(client.read_artifacts)
    return "\n".join(
        [*(log.message for log in logs), *(f"{a.key} {a.data} {a.description}" for a in artifacts)]
    )
