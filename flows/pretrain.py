"""pretrain: corpus → tokenizer + title–body ``pairs`` → contrastively pretrained ``checkpoint``.

Training runs in the flow's process (or a GPU work pool), never inside a Dask worker: DataLoader
workers cannot start from Dask's daemonic processes (stack-notes.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import StageEnv, load_table, open_env, producer_ids, publish
from flows.training import folder_files, run_training
from m3.stage import StageOutput, StageSpec, run_stage
from tasks.artifact_io import schema_dict, write_table
from tasks.pairs import title_body_pairs

MODEL_CODE = ("model", "tasks/training")


def build_tokenizer(env: StageEnv, corpus: str, refresh: bool):
    from model.tokenizer import train_tokenizer

    spec = StageSpec(
        "tokenizer",
        "tokenizer",
        env.profile.name,
        inputs={"corpus": corpus},
        config=env.profile.tokenizer.model_dump(mode="json"),
        code=("model/tokenizer.py", "flows/pretrain.py"),
    )

    def build(scratch: Path) -> StageOutput:
        docs = load_table(env, corpus, "corpus")
        texts = (t for doc in docs.itertuples() for t in (doc.title, *doc.text.split("\n")) if t)
        cfg = env.profile.tokenizer
        train_tokenizer(texts, scratch / "tokenizer", vocab_size=cfg.vocab_size, seed=cfg.seed, config=cfg)
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(str(scratch / "tokenizer")))
        return StageOutput(folder_files(scratch / "tokenizer"), {"vocab_size": size, "docs": len(docs)})

    return run_stage(env.store, spec, build, refresh=refresh, flow="pretrain", **producer_ids())


def build_pairs(env: StageEnv, corpus: str, refresh: bool):
    spec = StageSpec(
        "pairs",
        "pairs",
        env.profile.name,
        inputs={"corpus": corpus},
        config=env.profile.pairs.model_dump(mode="json"),
        code=("tasks/pairs.py", "tasks/text.py", "flows/pretrain.py"),
    )

    def build(scratch: Path) -> StageOutput:
        pairs, stats = title_body_pairs(load_table(env, corpus, "corpus"), env.profile.pairs)
        rows = write_table(pairs, "pairs", scratch)
        return StageOutput({r: scratch / r for r in rows}, stats, schema_dict("pairs"), rows)

    return run_stage(env.store, spec, build, refresh=refresh, flow="pretrain", **producer_ids())


def build_retromae(env: StageEnv, tokenizer: str, corpus: str, refresh: bool):
    """Stage 1 of the recipe: RetroMAE on the corpus text (a fresh ``ModelSpec`` model on the trained
    tokenizer), saved as ``checkpoint/<profile>-retromae``; contrastive pretraining starts from it."""
    from flows.common import progress_logger
    from model.m3 import M3Model
    from tasks.retromae import train_retromae

    cfg = env.profile.retromae
    spec = StageSpec(
        "retromae",
        "checkpoint",
        f"{env.profile.name}-retromae",
        inputs={"tokenizer": tokenizer, "corpus": corpus},
        config={"model": env.profile.model.model_dump(mode="json"), "retromae": cfg.model_dump(mode="json")},
        code=("model", "tasks/retromae.py", "flows/pretrain.py"),
    )

    def build(scratch: Path) -> StageOutput:
        texts = [t for t in load_table(env, corpus, "corpus")["text"] if t]
        model = M3Model.from_spec(env.profile.model, env.store.materialize(tokenizer))
        summary = train_retromae(model, texts, cfg, on_progress=progress_logger("retromae", cfg.log_every))
        model.save_pretrained(scratch / "model")
        return StageOutput(folder_files(scratch / "model"), summary)

    return run_stage(env.store, spec, build, refresh=refresh, flow="pretrain", **producer_ids())


@flow(name="pretrain")
def pretrain(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Tokenizer trained on the corpus, a tiny XLM-R-shaped M3 model (RetroMAE-pretrained when the
    profile has ``retromae``), dense InfoNCE on title–body pairs."""
    from model.m3 import M3Model
    from tasks.training import TrainExample

    env = open_env(profile, store)
    log = get_run_logger()
    corpus = env.input_id(inputs, "corpus", "corpus")
    tokenizer = build_tokenizer(env, corpus, refresh)
    publish(env, tokenizer)
    retromae = build_retromae(env, tokenizer.manifest_id, corpus, refresh) if env.profile.retromae else None
    if retromae is not None:
        publish(env, retromae)
    pairs = build_pairs(env, corpus, refresh)
    publish(env, pairs)
    spec = StageSpec(
        "pretrain",
        "checkpoint",
        env.profile.name,
        inputs={
            "tokenizer": tokenizer.manifest_id,
            "pairs": pairs.manifest_id,
            **({"retromae": retromae.manifest_id} if retromae is not None else {}),
        },
        config={
            "model": env.profile.model.model_dump(mode="json"),
            "train": env.profile.pretrain.model_dump(mode="json"),
        },
        code=(*MODEL_CODE, "flows/pretrain.py", "flows/training.py"),
    )

    def build(scratch: Path) -> StageOutput:
        table = load_table(env, pairs.manifest_id, "pairs")
        examples = [
            TrainExample(query=q, pos=p) for q, p in zip(table["query"], table["positive"], strict=True)
        ]
        model = (  # from the RetroMAE checkpoint when the profile has that stage
            M3Model.from_spec(env.profile.model, env.store.materialize(tokenizer.manifest_id))
            if retromae is None
            else M3Model.from_pretrained(env.store.materialize(retromae.manifest_id))
        )
        cfg = env.profile.pretrain
        log.info("contrastive pretraining on %d title–body pairs", len(examples))
        model.save_pretrained(scratch / "start")
        trained, summary = run_training(env, spec, scratch / "start", examples, cfg, scratch)
        return StageOutput(folder_files(trained), {"objective": "dense InfoNCE (title-body)", **summary})

    return publish(env, run_stage(env.store, spec, build, refresh=refresh, flow="pretrain", **producer_ids()))
