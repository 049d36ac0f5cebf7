"""Shared fixtures: a real S3-compatible server (moto's server mode) and store URLs; one Prefect
API server for the session; one run of the tiny pipeline that several end-to-end tests start from;
the tokenizers the model and training tests build their tiny models on.

Fixtures only: helpers and constants (paths, ``m3`` processes, texts, tiny models, fake servers)
live in ``tests/support/``."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.support.m3_process import PREFECT_START_S, m3_subprocess_env, run_m3
from tests.support.net import free_port
from tests.support.paths import TINY


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on a free port; the environment points boto/s3fs at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "M3_S3_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_url(s3_server):
    """A fresh bucket per test."""
    import s3fs

    bucket = f"m3-test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(bucket)
    return f"s3://{bucket}/store"


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_url")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect API server (SQLite) for the whole session, as ``m3`` itself starts one.

    ``m3`` without ``PREFECT_API_URL`` starts a private ephemeral server per command (seconds of
    start-up on a loaded machine); tests that run many ``m3`` commands point them at this one
    instead (see ``m3_api_env``). The demo end-to-end test still runs ``m3`` the way users do,
    without it. Yields ``{"url", "home", "empty_db"}``; ``empty_db`` is a copy of its SQLite
    database as it was right after start-up (migrated, nothing run yet), for tests that start a
    server of their own to start from instead of migrating a new database.
    """
    import sqlite3

    from prefect.server.api.server import SubprocessASGIServer

    from m3.prefect_api import set_quiet_defaults

    set_quiet_defaults()
    home = tmp_path_factory.mktemp("prefect-session")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)  # the server's SQLite database lives here
    try:
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=PREFECT_START_S)
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old
    empty_db = home / "empty-migrated.db"
    with sqlite3.connect(home / "prefect.db") as src, sqlite3.connect(empty_db) as dst:
        src.backup(dst)  # consistent while the server runs (WAL included)
    yield {"url": server.api_url, "home": str(home), "empty_db": empty_db}
    server.stop()


@pytest.fixture
def m3_api_env(tmp_path, prefect_server):
    """``m3_subprocess_env`` against the session's Prefect server."""
    return m3_subprocess_env(tmp_path, prefect_server["url"])


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, prefect_server):
    """The tiny profile through ``m3 run`` once per session, in two steps, kept as store templates.

    1. ``--only ingest --only synthesize`` → ``data_store`` (corpus and queries only);
    2. ``--from synthesize`` on the same store → ``full_store`` (every stage; ``resumed`` is that
       command's JSON output: synthesize came from the store, the others were built);
    ``output``: what both commands printed (stdout and stderr, the JSON aside).

    Tests copy a template (:func:`tests.support.m3_process.copy_store`) instead of building those
    stages again.
    """
    base = tmp_path_factory.mktemp("tiny-pipeline")
    env = m3_subprocess_env(base, prefect_server["url"])
    store = base / "store"
    data = run_m3(
        ["run", "--profile", TINY, "--store", str(store), "--only", "ingest", "--only", "synthesize"], env
    )
    data_store = base / "data-stages"
    shutil.copytree(store, data_store)
    rest = run_m3(["run", "--profile", TINY, "--store", str(store), "--from", "synthesize", "--json"], env)
    resumed = json.loads(rest.stdout)
    output = data.stdout + data.stderr + rest.stderr  # what a user of `m3 run` sees (the JSON aside)
    return {"data_store": data_store, "full_store": store, "resumed": resumed, "output": output}


@pytest.fixture
def one_torch_thread():
    """torch on one thread during the test (the machine's cores are shared); the old count after."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# -- tokenizers (trained once per session; deterministic, so every test sees the same pieces) -------
@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    """600 pieces on the multilingual sentence corpus (:func:`tests.support.text.corpus`)."""
    from model.tokenizer import train_tokenizer
    from tests.support.text import corpus

    return train_tokenizer(corpus(), tmp_path_factory.mktemp("tok"), vocab_size=600, seed=0)


@pytest.fixture(scope="session")
def retromae_tok_dir(tmp_path_factory) -> Path:
    """400 pieces on the same corpus: the RetroMAE tests' masking and length numbers assume it."""
    from model.tokenizer import train_tokenizer
    from tests.support.text import corpus

    return train_tokenizer(corpus(), tmp_path_factory.mktemp("tok-retromae"), vocab_size=400, seed=0)


@pytest.fixture(scope="session")
def pairs_tok_dir(tmp_path_factory) -> Path:
    """2000 pieces on the passages of the training pairs (:data:`tests.support.text.PAIRS`)."""
    from model.tokenizer import train_tokenizer
    from tests.support.text import PAIRS

    return train_tokenizer([p for _, p in PAIRS], tmp_path_factory.mktemp("tok-pairs"), vocab_size=2000)
