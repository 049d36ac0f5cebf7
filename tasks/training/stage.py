"""The training stages: ``pretrain`` (corpus → ``checkpoint``) and ``finetune`` (checkpoint +
train-set → ``model``).

``pretrain`` is the recipe's first two steps: the starting model (``model.init``, or a tokenizer
trained on the corpus and a fresh ``ModelSpec`` model), RetroMAE when the profile has ``retromae``,
then dense InfoNCE on title–body and translation ``pairs`` unless ``pretrain`` is null. ``finetune``
is the unified fine-tuning with self-knowledge distillation on the mined train-set (arXiv 2402.03216 §3.3).

Training runs in the flow's process (or a GPU work pool), never inside a Dask worker: DataLoader
workers cannot start from Dask's daemonic processes (docs/architecture.md, "Run lifetime").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3.artifact_io import read_jsonl, schema_dict, write_table
from m3.publish import publish
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, progress_logger, run_logger
from tasks.pairs import TRANSLATION, bitext_files, evaluation_guard, pretraining_pairs
from tasks.round_names import round_name
from tasks.training.card import render_card
from tasks.training.card_facts import card_facts, train_languages
from tasks.training.config import TrainConfig
from tasks.training.resumable_run import TrainingReport, folder_files, run_training

if TYPE_CHECKING:
    import pandas as pd

    from model.config import ModelSpec
    from model.init import InitSource
    from model.m3 import M3Model
    from model.tokenizer import TokenizerConfig
    from tasks.pairs import PairsConfig
    from tasks.training.data import TrainExample
    from tasks.training.retromae import RetroMAEConfig


@dataclass(frozen=True)
class PretrainSections:
    """What the pretrain stage reads of a profile: the flow takes it from the profile
    (``m3.app.profile.Profile.pretrain_sections``), so no stage sees the whole profile."""

    model: ModelSpec
    tokenizer: TokenizerConfig
    retromae: RetroMAEConfig | None
    pairs: PairsConfig
    pretrain: TrainConfig | None
    base_dir: str  # where relative paths (bitext, evaluation sets, model.init folders) start
    heldout_fraction: float  # the synthesize stage's split by document: its test side is never trained on
    split_seed: int
    evaluation_only: list[str]  # the profile's evaluation sets: kept out of the pairs


def _spec(stage: str, kind: str, name: str, inputs: dict[str, str], config: dict) -> StageSpec:
    """A training stage's spec: its code is this module's import closure."""
    return StageSpec(stage, kind, name, inputs=inputs, config=config, code=(__file__,))


def build_tokenizer(env: StageEnv, sections: PretrainSections, corpus: str, refresh: bool) -> StageResult:
    """A SentencePiece tokenizer trained on the corpus (titles and lines), for a model from scratch."""
    from model.tokenizer import train_tokenizer

    spec = _spec(
        "tokenizer",
        "tokenizer",
        env.profile.name,
        {"corpus": corpus},
        sections.tokenizer.model_dump(mode="json"),
    )

    def build(scratch: Path) -> StageOutput:
        docs = env.table(corpus, "corpus")
        texts = (t for doc in docs.itertuples() for t in (doc.title, *doc.text.split("\n")) if t)
        cfg = sections.tokenizer
        train_tokenizer(texts, scratch / "tokenizer", vocab_size=cfg.vocab_size, seed=cfg.seed, config=cfg)
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(str(scratch / "tokenizer")))
        return StageOutput(folder_files(scratch / "tokenizer"), {"vocab_size": size, "docs": len(docs)})

    return env.run(spec, build, refresh=refresh)


def build_pairs(env: StageEnv, sections: PretrainSections, corpus: str, refresh: bool) -> StageResult:
    """The contrastive pretraining data: title–body pairs of the corpus' training documents and
    translation pairs of the profile's bitext (``pairs.translation``); nothing the profile evaluates
    on (``evaluation_guard``: its held-out documents, evaluation sets and their languages)."""
    cfg, base_dir, evaluated = sections.pairs, sections.base_dir, sections.evaluation_only
    inputs = {"corpus": corpus}
    if cfg.translation:
        inputs["bitext"] = register_bitext(env, bitext_files(cfg, base_dir), refresh)
    spec = _spec(
        "pairs",
        "pairs",
        env.profile.name,
        inputs,
        {
            **cfg.model_dump(mode="json"),
            "evaluation_only": evaluated,
            "held_out": {"fraction": sections.heldout_fraction, "seed": sections.split_seed},
        },
    )

    def build(scratch: Path) -> StageOutput:
        guard = evaluation_guard(evaluated, base_dir, sections.heldout_fraction, sections.split_seed)
        pairs, stats = pretraining_pairs(env.table(corpus, "corpus"), cfg, base_dir, guard)
        run_logger(__name__).info("pretraining pairs: %s", stats)
        rows = write_table(pairs, "pairs", scratch)
        return StageOutput({r: scratch / r for r in rows}, stats, schema_dict("pairs"), rows)

    return env.run(spec, build, refresh=refresh)


def register_bitext(env: StageEnv, files: list[Path], refresh: bool) -> str:
    """The raw bitext files as a ``source`` artifact, the lineage root of the translation pairs."""
    named = {p.name: p for p in files}
    name = f"{env.profile.name}.bitext-pairs"
    return env.register_files(
        "register-source", "source", name, named, {"format": "tatoeba"}, __file__, refresh=refresh
    )


def build_start(env: StageEnv, sections: PretrainSections, refresh: bool) -> StageResult:
    """The profile's ``model.init`` (a pretrained encoder) as ``checkpoint/<profile>-init``, the lineage
    root of every model trained from it: heads added (or kept), positions extended, pooling recorded,
    the profile's instruction prefixes set (else the folder's own are kept)."""
    from model.init import resolve_init

    mspec = sections.model
    assert mspec.init is not None  # only called when the profile names a starting model
    source = resolve_init(mspec.init, base_dir=sections.base_dir, store=env.store, revision=mspec.revision)
    spec = _spec(
        "init",
        "checkpoint",
        f"{env.profile.name}-init",
        {"init": source.manifest_id} if source.manifest_id else {},
        {"model": mspec.model_dump(mode="json"), "source_identity": source.identity},
    )

    def build(scratch: Path) -> StageOutput:
        model, info = load_init(mspec, source)
        run_logger(__name__).info(
            "starting model %s (%s, %s pooling, %d tokens): heads %s, prefixes %s",
            mspec.init,
            info["model_type"],
            info["pooling"],
            info["max_length"],
            info["heads"],
            info["prefixes"],
        )
        model.save_pretrained(scratch / "model")
        return StageOutput(folder_files(scratch / "model"), info)

    return env.run(spec, build, refresh=refresh)


def load_init(mspec: ModelSpec, source: InitSource) -> tuple[M3Model, dict[str, Any]]:
    """The profile's starting model from its resolved ``model.init``: pooling, positions and seed as the
    profile says, and its instruction prefixes where it sets them (else the folder's own)."""
    from model.init import load_start_model

    model, info = load_start_model(
        source, pooling=mspec.pooling, max_positions=mspec.max_positions, seed=mspec.seed
    )
    model.set_prefixes(mspec.query_prefix, mspec.passage_prefix)
    info["prefixes"] = {"query": model.query_prefix, "passage": model.passage_prefix}
    return model, info


def build_retromae(
    env: StageEnv,
    sections: PretrainSections,
    corpus: str,
    refresh: bool,
    tokenizer: str | None,
    start: str | None,
) -> StageResult:
    """Stage 1 of the recipe: RetroMAE on the corpus text, from the starting model (``start``) or a
    fresh ``ModelSpec`` model on the trained tokenizer, saved as ``checkpoint/<profile>-retromae``;
    contrastive pretraining starts from it."""
    from tasks.training.retromae import train_retromae

    cfg = sections.retromae
    assert cfg is not None  # only called when the profile has a retromae section
    base = _model_input("start", tokenizer, start)
    spec = _spec(
        "retromae",
        "checkpoint",
        f"{env.profile.name}-retromae",
        {**base, "corpus": corpus},
        {"model": sections.model.model_dump(mode="json"), "retromae": cfg.model_dump(mode="json")},
    )

    def build(scratch: Path) -> StageOutput:
        texts = [t for t in env.table(corpus, "corpus")["text"] if t]
        model = start_model(env, sections.model, tokenizer, start)
        summary = train_retromae(model, texts, cfg, on_progress=progress_logger("retromae", cfg.log_every))
        model.save_pretrained(scratch / "model")
        return StageOutput(folder_files(scratch / "model"), summary)

    return env.run(spec, build, refresh=refresh)


def _model_input(name: str, tokenizer: str | None, start: str | None) -> dict[str, str]:
    """The stage input a model is built from: the stored ``start`` model (as ``name``), else the
    trained tokenizer of a fresh one."""
    if start is not None:
        return {name: start}
    assert tokenizer is not None
    return {"tokenizer": tokenizer}


def start_model(env: StageEnv, spec: ModelSpec, tokenizer: str | None, start: str | None) -> M3Model:
    """A stored model to continue from, else a fresh ``ModelSpec`` model on the trained tokenizer."""
    from model.m3 import M3Model

    if start is not None:
        return M3Model.from_pretrained(env.store.materialize(start))
    assert tokenizer is not None  # a fresh model needs the trained tokenizer
    return M3Model.from_spec(spec, env.store.materialize(tokenizer))


def build_checkpoint(
    env: StageEnv,
    sections: PretrainSections,
    corpus: str,
    refresh: bool,
    report: TrainingReport | None = None,
) -> StageResult:
    """The ``pretrain`` stage: starting model, RetroMAE, contrastive pretraining (as configured);
    ``report`` shows the contrastive run's progress (a flow: Prefect artifacts)."""
    tokenizer = start = None
    if sections.model.init:
        start = build_start(env, sections, refresh).manifest_id
    else:
        tokenizer = build_tokenizer(env, sections, corpus, refresh).manifest_id
    if sections.retromae:
        start = build_retromae(env, sections, corpus, refresh, tokenizer, start).manifest_id
    cfg = sections.pretrain
    if cfg is None:  # no contrastive stage: the pretrained (or RetroMAE) model is the checkpoint
        assert start is not None  # the profile check refuses pretrain: null without init or retromae
        ref = f"checkpoint/{env.profile.name}"
        head = env.store.head(ref)
        if head is None or head.manifest != start:
            env.store.set_ref(ref, start)
        run_logger(__name__).info(
            "pretrain: no contrastive stage (pretrain: null); %s is %s", ref, start[:12]
        )
        result = StageResult("pretrain", "checkpoint", ref, start, cached=True)
        publish(env.store, env.profile.name, result)
        return result
    pairs = build_pairs(env, sections, corpus, refresh).manifest_id
    base = _model_input("retromae" if sections.retromae else "init", tokenizer, start)
    spec = _spec(
        "pretrain",
        "checkpoint",
        env.profile.name,
        {**base, "pairs": pairs},
        {"model": sections.model.model_dump(mode="json"), "train": cfg.model_dump(mode="json")},
    )

    def build(scratch: Path) -> StageOutput:
        table = env.table(pairs, "pairs")
        examples = pair_examples(table)
        model = start_model(env, sections.model, tokenizer, start)
        kinds = table["kind"].value_counts().to_dict()
        run_logger(__name__).info("contrastive pretraining on %d pairs %s", len(examples), kinds)
        model.save_pretrained(scratch / "start")
        trained, summary = run_training(env, spec, scratch / "start", examples, cfg, scratch, refresh, report)
        return StageOutput(
            folder_files(trained),
            {"objective": "dense InfoNCE (" + ", ".join(sorted(kinds)) + ")", **summary},
        )

    return env.run(spec, build, refresh=refresh)


def pair_examples(table: pd.DataFrame) -> list[TrainExample]:
    """Contrastive pretraining examples from the ``pairs`` table. A title -> body pair is asymmetric
    (query and passage prefixes); a sentence and its translation are the same kind of text, so both
    take the query prefix (E5's symmetric tasks)."""
    from tasks.training import TrainExample

    return [
        TrainExample(query=q, pos=p, symmetric=k == TRANSLATION)
        for q, p, k in zip(table["query"], table["positive"], table["kind"], strict=True)
    ]


def finetune_config(cfg: TrainConfig, nproc_per_node: int | None) -> TrainConfig:
    """The profile's ``finetune`` with ``nproc_per_node`` overridden (0: every visible GPU)."""
    if nproc_per_node is None:
        return cfg
    import torch

    return cfg.model_copy(update={"nproc_per_node": nproc_per_node or max(1, torch.cuda.device_count())})


def build_model(
    env: StageEnv,
    finetune: TrainConfig,
    rounds: int,
    checkpoint: str,
    train_set: str,
    refresh: bool,
    nproc_per_node: int | None = None,
    round: int = 1,
    report: TrainingReport | None = None,
) -> StageResult:
    """The ``finetune`` stage: the checkpoint trained on the train-set's hard negatives; one ANCE
    round's model is ``model/<profile>-r<round>`` (of ``rounds``: the profile's ``mine.rounds``);
    ``report`` shows its progress (a flow: Prefect artifacts)."""
    from tasks.training import examples_from_rows

    cfg = finetune_config(finetune, nproc_per_node)
    spec = _spec(
        "finetune",
        "model",
        round_name(env.profile.name, round, rounds),
        {"checkpoint": checkpoint, "train-set": train_set},
        {"train": cfg.model_dump(mode="json")},
    )

    def build(scratch: Path) -> StageOutput:
        folder = env.store.materialize(train_set)
        examples = examples_from_rows(read_jsonl(folder / "train.jsonl"))
        run_logger(__name__).info(
            "fine-tuning %s on %d queries, group size %d",
            "+".join(cfg.functions),
            len(examples),
            cfg.group_size,
        )
        start = env.store.materialize(checkpoint)
        trained, summary = run_training(env, spec, start, examples, cfg, scratch, refresh, report)
        write_card(env, spec, trained, cfg, summary, train_languages(folder / "train.jsonl"))
        objective = "unified (self-distillation)" if len(cfg.functions) > 1 else f"{cfg.functions[0]} InfoNCE"
        return StageOutput(folder_files(trained), {"objective": objective + " + hard negatives", **summary})

    return env.run(spec, build, refresh=refresh)


def write_card(
    env: StageEnv,
    spec: StageSpec,
    folder: Path,
    cfg: TrainConfig,
    summary: dict[str, Any],
    languages: dict[str, int],
) -> None:
    """The model card (``README.md``) of the trained folder: start model, training chain, data,
    settings and summary; its evaluation section points at ``m3 export`` (docs/CONTRACTS.md)."""
    facts = card_facts(
        env.store,
        spec.name,
        list(spec.inputs.values()),
        folder,
        cfg.model_dump(mode="json"),
        summary,
        languages,
    )
    (folder / "README.md").write_text(render_card(facts), encoding="utf-8")
