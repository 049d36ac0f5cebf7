"""pretrain: corpus → starting model (``model.init``, or a tokenizer + a fresh model) → RetroMAE →
title–body ``pairs`` → contrastively pretrained ``checkpoint``.

Training runs in the flow's process (or a GPU work pool), never inside a Dask worker: DataLoader
workers cannot start from Dask's daemonic processes (stack-notes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import StageEnv, flow_result, load_table, open_env, publish
from flows.training import folder_files, run_training
from m3.stage import StageOutput, StageResult, StageSpec, declare
from tasks.artifact_io import schema_dict, write_table
from tasks.pairs import title_body_pairs


def build_tokenizer(env: StageEnv, corpus: str, refresh: bool):
    from model.tokenizer import train_tokenizer

    spec = StageSpec(
        "tokenizer",
        "tokenizer",
        env.profile.name,
        inputs={"corpus": corpus},
        config=env.profile.tokenizer.model_dump(mode="json"),
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        docs = load_table(env, corpus, "corpus")
        texts = (t for doc in docs.itertuples() for t in (doc.title, *doc.text.split("\n")) if t)
        cfg = env.profile.tokenizer
        train_tokenizer(texts, scratch / "tokenizer", vocab_size=cfg.vocab_size, seed=cfg.seed, config=cfg)
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(str(scratch / "tokenizer")))
        return StageOutput(folder_files(scratch / "tokenizer"), {"vocab_size": size, "docs": len(docs)})

    return env.run(spec, build, refresh=refresh)


def build_pairs(env: StageEnv, corpus: str, refresh: bool):
    spec = StageSpec(
        "pairs",
        "pairs",
        env.profile.name,
        inputs={"corpus": corpus},
        config=env.profile.pairs.model_dump(mode="json"),
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        pairs, stats = title_body_pairs(load_table(env, corpus, "corpus"), env.profile.pairs)
        rows = write_table(pairs, "pairs", scratch)
        return StageOutput({r: scratch / r for r in rows}, stats, schema_dict("pairs"), rows)

    return env.run(spec, build, refresh=refresh)


def build_start(env: StageEnv, refresh: bool):
    """The profile's ``model.init`` (a pretrained encoder) as ``checkpoint/<profile>-init``, the lineage
    root of every model trained from it: heads added (or kept), positions extended, pooling recorded."""
    from model.init import load_start_model, resolve_init

    mspec = env.profile.model
    source = resolve_init(mspec.init, base_dir=env.profile.base_dir, store=env.store, revision=mspec.revision)
    spec = StageSpec(
        "init",
        "checkpoint",
        f"{env.profile.name}-init",
        inputs={"init": source.manifest_id} if source.manifest_id else {},
        config={"model": mspec.model_dump(mode="json"), "source_identity": source.identity},
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        model, info = load_start_model(
            source, pooling=mspec.pooling, max_positions=mspec.max_positions, seed=mspec.seed
        )
        get_run_logger().info(
            "starting model %s (%s, %s pooling, %d tokens): heads %s",
            mspec.init,
            info["model_type"],
            info["pooling"],
            info["max_length"],
            info["heads"],
        )
        model.save_pretrained(scratch / "model")
        return StageOutput(folder_files(scratch / "model"), info)

    return env.run(spec, build, refresh=refresh)


def build_retromae(env: StageEnv, corpus: str, refresh: bool, tokenizer: str | None, start: str | None):
    """Stage 1 of the recipe: RetroMAE on the corpus text, from the starting model (``start``) or a
    fresh ``ModelSpec`` model on the trained tokenizer, saved as ``checkpoint/<profile>-retromae``;
    contrastive pretraining starts from it."""
    from flows.common import progress_logger
    from tasks.training.retromae import train_retromae

    cfg = env.profile.retromae
    base = {"start": start} if start else {"tokenizer": tokenizer}
    spec = StageSpec(
        "retromae",
        "checkpoint",
        f"{env.profile.name}-retromae",
        inputs={**base, "corpus": corpus},
        config={"model": env.profile.model.model_dump(mode="json"), "retromae": cfg.model_dump(mode="json")},
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        texts = [t for t in load_table(env, corpus, "corpus")["text"] if t]
        model = _start_model(env, tokenizer, start)
        summary = train_retromae(model, texts, cfg, on_progress=progress_logger("retromae", cfg.log_every))
        model.save_pretrained(scratch / "model")
        return StageOutput(folder_files(scratch / "model"), summary)

    return env.run(spec, build, refresh=refresh)


def _start_model(env: StageEnv, tokenizer: str | None, start: str | None):
    """A stored model to continue from, else a fresh ``ModelSpec`` model on the trained tokenizer."""
    from model.m3 import M3Model

    if start is not None:
        return M3Model.from_pretrained(env.store.materialize(start))
    return M3Model.from_spec(env.profile.model, env.store.materialize(tokenizer))


@declare("checkpoint", needs=("corpus",), sections=("model", "tokenizer", "retromae", "pairs", "pretrain"))
@flow(name="pretrain")
def pretrain(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The starting model (``model.init``, or a tokenizer trained on the corpus and a fresh XLM-R-shaped
    model), RetroMAE when the profile has ``retromae``, then dense InfoNCE on title–body pairs unless
    ``pretrain`` is null (then the starting model is the checkpoint)."""
    from tasks.training import TrainExample

    env = open_env(profile, store)
    log = get_run_logger()
    corpus = env.input_id(inputs, "corpus", "corpus")
    tokenizer = start = None
    if env.profile.model.init:
        start = build_start(env, refresh).manifest_id
    else:
        tokenizer = build_tokenizer(env, corpus, refresh).manifest_id
    if env.profile.retromae:
        start = build_retromae(env, corpus, refresh, tokenizer, start).manifest_id
    cfg = env.profile.pretrain
    if cfg is None:  # no contrastive stage: the pretrained (or RetroMAE) model is the checkpoint
        ref = f"checkpoint/{env.profile.name}"
        head = env.store.head(ref)
        if head is None or head.manifest != start:
            env.store.set_ref(ref, start)
        log.info("pretrain: no contrastive stage (pretrain: null); %s is %s", ref, start[:12])
        result = StageResult("pretrain", "checkpoint", ref, start, cached=True)
        publish(env, result)
        return flow_result(result)
    pairs = build_pairs(env, corpus, refresh).manifest_id
    base = (
        {"tokenizer": tokenizer} if start is None else {"retromae" if env.profile.retromae else "init": start}
    )
    spec = StageSpec(
        "pretrain",
        "checkpoint",
        env.profile.name,
        inputs={**base, "pairs": pairs},
        config={"model": env.profile.model.model_dump(mode="json"), "train": cfg.model_dump(mode="json")},
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        table = load_table(env, pairs, "pairs")
        examples = [
            TrainExample(query=q, pos=p) for q, p in zip(table["query"], table["positive"], strict=True)
        ]
        model = _start_model(env, tokenizer, start)
        log.info("contrastive pretraining on %d title–body pairs", len(examples))
        model.save_pretrained(scratch / "start")
        trained, summary = run_training(env, spec, scratch / "start", examples, cfg, scratch, refresh)
        return StageOutput(folder_files(trained), {"objective": "dense InfoNCE (title-body)", **summary})

    return flow_result(env.run(spec, build, refresh=refresh))
