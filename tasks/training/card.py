"""The model card (``README.md``) of a saved model folder, as the HF hub and sentence-transformers read it.

Rendering only: every input is a plain value the caller gathered (``tasks.training.card_facts``), so
a card can be checked without a store or a model. The finetune stage writes the card into the
``model`` artifact; that artifact is committed before the evaluate stage runs, so its "Evaluation"
section only says where the numbers live, and ``m3 export`` replaces that section with the table of
the newest ``report`` on the model (:func:`evaluation_section`, :func:`with_evaluation`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

EVALUATION_HEADING = "## Evaluation"
TAGS = ("bge-m3", "m3", "sentence-transformers", "feature-extraction", "sentence-similarity")
PRIMARY_METRIC = "ndcg_cut_10"
METRIC_NAMES = {"ndcg_cut_10": "nDCG@10", "recall_100": "Recall@100", "mrr_cut_10": "MRR@10"}
REFERENCE_SYSTEM = "BM25"
NO_LANGUAGE = "und"  # the corpus' "could not tell" language: no ISO code for the hub
# The fine-tuning settings a reader needs to reproduce or judge the run, in this order.
SETTINGS = (
    "functions",
    "epochs",
    "max_steps",
    "batch_size",
    "group_size",
    "lr",
    "head_lr_scale",
    "warmup_ratio",
    "temperature",
    "self_distill",
    "self_distill_start_step",
    "max_length",
    "query_max_length",
    "teacher_distill_weight",
    "freeze_word_embeddings",
    "precision",
    "nproc_per_node",
    "seed",
)


@dataclass(frozen=True)
class CardFacts:
    """What a model card says, as plain values.

    ``model``: the folder's ``m3_config.json`` merged with its HF ``config.json`` (``model_type``,
    ``hidden_size``, ``num_hidden_layers``, ``pooling``, ``max_length``, ``colbert_dim``, the
    prefixes, ``flagembedding_kwargs``). ``parents``: the model's own parents (checkpoint and
    train-set ids). ``start``: the ``model.init`` checkpoint's manifest metrics plus its
    ``kind``/``name``/``id`` (empty for a model trained from scratch; ``tokenizer`` then names the
    trained tokenizer's node). ``chain``: the lineage nodes the model was made from, oldest first,
    each ``{kind, name, id, stage, parents}``. ``corpora``: ``{kind, name, id, stats}`` with the
    corpus' ``stats.json``. ``queries`` / ``pairs`` / ``train_set``: ``{kind, name, id, metrics}``;
    ``train_languages``: the train-set's queries per language (empty: not counted). ``training``:
    the ``TrainConfig`` as JSON; ``summary``: ``training/summary.json``."""

    name: str
    model: Mapping[str, Any]
    parents: Sequence[str] = ()
    start: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Mapping[str, Any] = field(default_factory=dict)
    chain: Sequence[Mapping[str, Any]] = ()
    corpora: Sequence[Mapping[str, Any]] = ()
    queries: Sequence[Mapping[str, Any]] = ()
    pairs: Sequence[Mapping[str, Any]] = ()
    train_set: Mapping[str, Any] = field(default_factory=dict)
    train_languages: Mapping[str, int] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


def render_card(facts: CardFacts) -> str:
    """The whole ``README.md``: hub front matter, then what the model is, how to load it, where it
    started, how it was made, on what data, and the evaluation section (a pointer until exported)."""
    parts = [
        front_matter(facts),
        _about(facts),
        _usage(facts.model),
        _start(facts),
        _chain(facts),
        _data(facts),
        _training(facts.training, facts.summary),
        evaluation_section(None, f"model/{facts.name}"),
    ]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def languages(facts: CardFacts) -> list[str]:
    """The languages the model was trained on: the train-set's, else the corpus' kept ones."""
    counts: dict[str, int] = dict(facts.train_languages)
    if not counts:
        for corpus in facts.corpora:
            for lang, c in (corpus.get("stats") or {}).get("by_lang", {}).items():
                counts[lang] = counts.get(lang, 0) + int(c.get("kept", 0))
    return sorted(lang for lang, n in counts.items() if n and lang and lang != NO_LANGUAGE)


def front_matter(facts: CardFacts) -> str:
    """The YAML header the hub indexes (library, task, tags, languages, the model it started from)."""
    meta: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": list(TAGS),
    }
    langs = languages(facts)
    if langs:
        meta["language"] = langs
    if facts.start.get("source_kind") == "hub" and facts.start.get("init"):
        meta["base_model"] = str(facts.start["init"])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _about(facts: CardFacts) -> str:
    m = facts.model
    hidden = m.get("hidden_size", "?")
    origin = f" from `{facts.start['init']}`" if facts.start.get("init") else ""
    lines = [
        f"# m3 model `{facts.name}`",
        "",
        f"An M3-Embedding retrieval model (the BGE-M3 recipe, arXiv 2402.03216) made by the m3 pipeline"
        f"{origin}: one {m.get('model_type', 'transformer')} encoder ({_layers(m.get('num_hidden_layers'))}, "
        f"hidden size {hidden}) whose one forward pass feeds three retrieval functions:",
        "",
        f"- **dense**: the {m.get('pooling', 'cls')}-pooled last hidden state, L2-normalised ({hidden} "
        "dimensions); scored by inner product;",
        "- **sparse**: a lexical weight per token (`sparse_linear.pt`: ReLU over a linear head, special "
        "tokens zeroed, repeats max-pooled); scored over the tokens query and passage share;",
        f"- **multi-vector**: one L2-normalised {m.get('colbert_dim', '?')}-dimensional vector per token "
        "(`colbert_linear.pt`); scored by late interaction (ColBERT).",
        "",
        f"Max length: {m.get('max_length', '?')} tokens"
        + _trained_lengths(facts.training)
        + ". Instruction prefixes (put before the text on their side, counted in the length): "
        + f"query {_prefix(m.get('query_prefix'))}, passage {_prefix(m.get('passage_prefix'))}.",
    ]
    return "\n".join(lines) + "\n"


def _trained_lengths(training: Mapping[str, Any]) -> str:
    passages, queries = training.get("max_length"), training.get("query_max_length")
    if passages is None:
        return ""
    return f" (fine-tuned at {queries or passages} query and {passages} passage tokens)"


def _prefix(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`" if value else "none"


def _usage(model: Mapping[str, Any]) -> str:
    kwargs = model.get("flagembedding_kwargs") or {}
    flag_args = "".join(f", {k}={json.dumps(v, ensure_ascii=False)}" for k, v in kwargs.items())
    return f"""## Usage

With this repository's encoder (all three functions; `prompt` picks the side's prefix):

```python
from model.m3 import M3Model

model = M3Model.from_pretrained("path/to/this/folder")
queries = model.encode(["..."], prompt="query", return_sparse=True, return_colbert=True)
passages = model.encode(["..."], prompt="passage", return_sparse=True, return_colbert=True)
scores = queries["dense_vecs"] @ passages["dense_vecs"].T
```

With sentence-transformers (the dense function; the prefixes are the folder's prompts):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
scores = model.encode_query(["..."]) @ model.encode_document(["..."]).T
```

With FlagEmbedding (it reads the prefixes only from its constructor: `m3_config.json`
`flagembedding_kwargs`):

```python
from FlagEmbedding import BGEM3FlagModel

model = BGEM3FlagModel("path/to/this/folder"{flag_args})
```
"""


def _start(facts: CardFacts) -> str:
    s = facts.start
    if not s:
        tok = facts.tokenizer
        where = f" (`{tok['kind']}/{tok['name']}` `{_short(tok['id'])}`)" if tok else ""
        return (
            "## Start model\n\nNone: a freshly initialised encoder on a SentencePiece tokenizer trained "
            f"on the corpus{where}.\n"
        )
    rows = [
        ("`model.init`", f"`{s.get('init', '?')}`"),
        ("source", f"{s.get('source_kind', '?')}, sha256 `{s.get('source_identity', '?')}`"),
        (
            "encoder",
            f"{s.get('model_type', '?')}, {_layers(s.get('layers'))}, hidden size "
            f"{s.get('hidden_size', '?')}, {_count(s.get('parameters'))} parameters, "
            f"{s.get('pooling', '?')} pooling, {s.get('max_length', '?')} tokens",
        ),
        ("heads", ", ".join(f"`{k}` {v}" for k, v in (s.get("heads") or {}).items()) or "–"),
    ]
    if s.get("positions"):
        p = s["positions"]
        rows.append(
            ("positions", f"{p.get('from_tokens')} → {p.get('to_tokens')} tokens ({p.get('method')})")
        )
    rows.append(("artifact", f"`{s.get('kind', 'checkpoint')}/{s.get('name', '?')}` `{_short(s.get('id'))}`"))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    return f"## Start model\n\n{table}"


def _chain(facts: CardFacts) -> str:
    """Every artifact the model was made from, oldest first, with its id (``m3 artifacts show ID``)."""
    names = {n["id"]: f"{n['kind']}/{n['name']}" for n in facts.chain}
    lines = [
        "## Training chain",
        "",
        "Every artifact this model was made from, oldest first (`m3 lineage` and "
        "`m3 artifacts show ID` in the store that made it):",
        "",
        "| stage | artifact | id | made from |",
        "|---|---|---|---|",
    ]
    for n in facts.chain:
        lines.append(
            f"| {n.get('stage') or '–'} | `{n['kind']}/{n['name']}` | `{_short(n['id'])}` | "
            f"{_made_from(n.get('parents') or (), names)} |"
        )
    lines.append(f"| finetune | `model/{facts.name}` | this folder | {_made_from(facts.parents, names)} |")
    return "\n".join(lines) + "\n"


def _made_from(parents: Sequence[str], names: Mapping[str, str]) -> str:
    return ", ".join(f"`{names.get(p, _short(p))}`" for p in parents) or "–"


def _data(facts: CardFacts) -> str:
    parts = ["## Training data\n"]
    for corpus in facts.corpora:
        parts.append(_corpus_table(corpus))
    for q in facts.queries:
        m = q.get("metrics") or {}
        parts.append(
            f"Queries `queries/{q['name']}` `{_short(q['id'])}`: {_count(m.get('queries'))} made by "
            f"{m.get('backend', '?')}, {_count(m.get('train'))} for training and {_count(m.get('test'))} "
            "held out for evaluation.\n"
        )
    for p in facts.pairs:
        m = p.get("metrics") or {}
        kinds = ", ".join(f"{k} {_count(v)}" for k, v in (m.get("pairs_per_kind") or {}).items())
        parts.append(
            f"Contrastive pretraining pairs `pairs/{p['name']}` `{_short(p['id'])}`: "
            f"{_count(m.get('pairs'))}{f' ({kinds})' if kinds else ''}.\n"
        )
    ts = facts.train_set
    if ts:
        m = ts.get("metrics") or {}
        parts.append(
            f"Fine-tuning set `train-set/{ts['name']}` `{_short(ts['id'])}`: {_count(m.get('queries'))} "
            f"queries with {_count(m.get('negatives'))} hard negatives mined by {m.get('teacher', '?')}.\n"
        )
    if facts.train_languages:
        langs = sorted(facts.train_languages)
        parts.append(
            "| | "
            + " | ".join(langs)
            + " | total |\n|---|"
            + "---:|" * (len(langs) + 1)
            + "\n| fine-tuning queries | "
            + " | ".join(_count(facts.train_languages[lang]) for lang in langs)
            + f" | {_count(sum(facts.train_languages.values()))} |\n"
        )
    return "\n".join(parts) if len(parts) > 1 else ""


def _corpus_table(corpus: Mapping[str, Any]) -> str:
    """Documents kept per source and language (rows: sources; the corpus' ``stats.json``)."""
    stats = corpus.get("stats") or {}
    by = stats.get("by_source_lang") or {}
    totals = stats.get("totals") or {}
    head = (
        f"Corpus `corpus/{corpus['name']}` `{_short(corpus['id'])}`: {_count(totals.get('kept'))} documents "
        f"kept of {_count(totals.get('read'))} read (filtered, near-duplicate and quarantined ones dropped)."
    )
    langs = sorted({lang for per in by.values() for lang, c in per.items() if c.get("kept")})
    if not langs:
        return head + "\n"
    lines = [
        head,
        "",
        "| source | " + " | ".join(langs) + " | total |",
        "|---|" + "---:|" * (len(langs) + 1),
    ]
    column = dict.fromkeys(langs, 0)
    for source in sorted(by):
        kept = {lang: int(by[source].get(lang, {}).get("kept", 0)) for lang in langs}
        for lang, n in kept.items():
            column[lang] += n
        lines.append(
            f"| {source} | "
            + " | ".join(_count(kept[lang]) for lang in langs)
            + f" | {_count(sum(kept.values()))} |"
        )
    lines.append(
        "| **total** | "
        + " | ".join(_count(column[lang]) for lang in langs)
        + f" | {_count(sum(column.values()))} |"
    )
    return "\n".join(lines) + "\n"


def _training(training: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    if not training and not summary:
        return ""
    settings = [(k, training[k]) for k in SETTINGS if k in training and training[k] is not None]
    lines = ["## Fine-tuning", ""]
    if settings:
        lines.append(
            "Settings (the profile's `finetune:` section): "
            + ", ".join(f"`{k}`: {_value(v)}" for k, v in settings)
            + "."
        )
        lines.append("")
    if summary:
        done = [
            ("steps", summary.get("steps")),
            ("epochs", summary.get("epochs")),
            ("examples", summary.get("examples")),
            ("final loss", summary.get("final_loss")),
            ("loss, first 10% of steps", summary.get("loss_first_10pct")),
            ("loss, last 10% of steps", summary.get("loss_last_10pct")),
            ("tokens/s", summary.get("tokens_per_s")),
            ("time", None if summary.get("seconds") is None else f"{float(summary['seconds']):.0f} s"),
            ("sparse-active tokens (last 10%)", _share(summary.get("sparse_active_last"))),
            ("processes", summary.get("world_size")),
            ("device", summary.get("device")),
        ]
        lines += ["| | |", "|---|---:|"]
        lines += [f"| {k} | {_value(v)} |" for k, v in done if v is not None]
        lines += ["", "`training/history.jsonl` has every step, `training/loss_curve.png` the loss curve."]
    return "\n".join(lines) + "\n"


def evaluation_section(
    report: Mapping[str, Any] | None, model_ref: str, model_id: str | None = None, exported: bool = False
) -> str:
    """The card's last section. ``report`` (``{ref, id, created_at, metrics}``, the report manifest's
    metrics as ``tasks.evaluate.report`` writes them): its nDCG@10 table, languages × retrieval modes
    with BM25 first and each system's average against BM25's. None before export: where the
    evaluation lives; after export (``exported``): that no report covers the model."""
    lines = [EVALUATION_HEADING, ""]
    if model_id:
        lines += [
            f"This folder is the model artifact `{model_ref}` `{model_id}`, exported by `m3 export`.",
            "",
        ]
    if report is None and not exported:
        lines.append(
            "Not in this folder: the model artifact is written before the evaluate stage scores it. "
            f"`m3 export {model_ref} DIR` writes this folder with this section filled in from the newest "
            "`report` on the model (nDCG@10 per language and retrieval mode, BM25 as the reference)."
        )
        return "\n".join(lines) + "\n"
    if report is None:
        lines.append(
            "No `report` in the store evaluates this model yet (the evaluate stage, `m3 run --only "
            "evaluate`, writes one); export again after it has run."
        )
        return "\n".join(lines) + "\n"
    metrics = report.get("metrics") or {}
    tables = metrics.get("tables") or {}
    metric = PRIMARY_METRIC if PRIMARY_METRIC in tables else next(iter(tables), PRIMARY_METRIC)
    name = METRIC_NAMES.get(metric, metric)
    where = ", ".join(d.get("name", "?") for d in metrics.get("datasets") or []) or "its datasets"
    lines.append(
        f"{name} ×100 from `{report.get('ref') or 'report'}` `{_short(report.get('id'))}` "
        f"({report.get('created_at', '?')}): {_count(metrics.get('queries'))} queries over "
        f"{_count(metrics.get('passages'))} passages ({where}); columns are languages (or datasets), "
        f"avg their macro average, × {REFERENCE_SYSTEM} each system's average over {REFERENCE_SYSTEM}'s."
    )
    lines += ["", score_table(tables.get(metric) or {})]
    long = metrics.get("long") or {}
    long_table = (long.get("tables") or {}).get(metric)
    if long_table:
        lines += [
            f"Long documents (MLDR format, {_count(long.get('queries'))} queries over "
            f"{_count(long.get('documents'))} whole documents, cut at {long.get('max_length', '?')} tokens):",
            "",
            score_table(long_table),
        ]
    lines.append("The report's `report.md` has every metric, `metrics.json` every number.")
    return "\n".join(lines) + "\n"


def score_table(table: Mapping[str, Mapping[str, float | None]]) -> str:
    """Systems × columns (×100, one decimal), the reference (BM25) first, then ``× BM25``."""
    if not table:
        return "(the report has no table for this metric)\n"
    columns = [c for c in dict.fromkeys(c for row in table.values() for c in row) if c != "avg"]
    columns.append("avg")
    systems = sorted(table, key=lambda s: s != REFERENCE_SYSTEM)  # stable: the report's order otherwise
    reference = (table.get(REFERENCE_SYSTEM) or {}).get("avg")
    head = "| system | " + " | ".join(columns) + f" | × {REFERENCE_SYSTEM} |"
    lines = [head, "|---|" + "---:|" * (len(columns) + 1)]
    for system in systems:
        row = table[system]
        avg = row.get("avg")
        ratio = f"{avg / reference:.2f}" if avg is not None and reference else "–"
        cells = ["–" if row.get(c) is None else f"{100 * float(row[c]):.1f}" for c in columns]  # type: ignore[arg-type]
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def with_evaluation(card: str, section: str) -> str:
    """``card`` with its evaluation section (from its heading to the end) replaced by ``section``."""
    at = card.find(f"\n{EVALUATION_HEADING}\n")
    body = card if at < 0 else card[: at + 1]
    return body.rstrip("\n") + "\n\n" + section


def _layers(n: Any) -> str:
    return f"{n} layer" if n == 1 else f"{n if n is not None else '?'} layers"


def _short(manifest_id: Any) -> str:
    return str(manifest_id or "?")[:12]


def _count(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _share(value: Any) -> str | None:
    return None if value is None else f"{100 * float(value):.0f}%"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, list | tuple):
        return "+".join(map(str, value))
    return str(value)
