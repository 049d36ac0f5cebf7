"""What the evaluation needs from a model, and the models that give it: M3 (all three retrieval
functions, optionally MCLS for long passages) and any sentence-transformers model (dense only).

Each puts the model's own instruction prefix before a text (multilingual-e5: "query: " /
"passage: "): the query side's for queries, the passage side's for the corpus, unless the call says
otherwise (a bitext corpus is encoded as queries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tasks.evaluate.config import EvalConfig

if TYPE_CHECKING:
    from model.m3 import Prompt


def side(query: bool, prompt: Prompt | None) -> Prompt:
    """The prefix side of a call: ``prompt`` when given, else that of queries or passages."""
    return prompt or ("query" if query else "passage")


class Encoder:
    """What the evaluation needs from a model: texts -> dense / lexical / multi-vector outputs.

    ``query`` picks the lengths (and MCLS for passages); ``prompt`` the prefix side (:func:`side`)."""

    label = "model"
    functions: frozenset[str] = frozenset({"dense"})
    mcls = False  # whether passages are encoded with MCLS (reported)

    def encode(
        self,
        texts: list[str],
        *,
        query: bool,
        prompt: Prompt | None = None,
        dense=True,
        sparse=False,
        multivec=False,
    ) -> dict:
        raise NotImplementedError

    def with_config(self, cfg: EvalConfig) -> Encoder:
        """The same model under other evaluation settings (the long-document run's lengths)."""
        return self


class M3Encoder(Encoder):
    """``model.m3.M3Model.encode`` with the evaluation's lengths and batch size.

    With ``cfg.mcls`` passages are encoded with MCLS (paper §3.4: a CLS token before every
    ``mcls_interval`` tokens, the dense vector is the mean of the CLS states), queries without it
    (they are short). A passage shorter than the interval gets exactly its plain vectors. MCLS
    replaces CLS pooling, so a model that pools by mean is refused here, before anything is encoded.
    """

    functions = frozenset({"dense", "sparse", "multivec"})

    def __init__(self, model, cfg: EvalConfig, label: str = "M3"):
        pooling = getattr(model, "pooling", "cls")
        if cfg.mcls and pooling != "cls":
            raise ValueError(
                f"evaluate.mcls needs a model with CLS pooling, but {label} pools by {pooling}: "
                "MCLS averages the states of inserted CLS tokens (paper §3.4); turn mcls off for this model"
            )
        self.model, self.cfg, self.label = model, cfg, label
        self.mcls = cfg.mcls

    def with_config(self, cfg: EvalConfig) -> M3Encoder:
        return M3Encoder(self.model, cfg, self.label)

    def encode(self, texts, *, query, prompt=None, dense=True, sparse=False, multivec=False) -> dict:
        extra = {} if query or not self.cfg.mcls else {"mcls": True, "mcls_interval": self.cfg.mcls_interval}
        return self.model.encode(
            list(texts),
            batch_size=self.cfg.encode_batch_size,
            max_length=self.cfg.query_max_length if query else self.cfg.max_length,
            return_dense=dense,
            return_sparse=sparse,
            return_colbert=multivec,  # M3Model.encode keeps FlagEmbedding's argument name
            prompt=side(query, prompt),
            **extra,
        )


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model folder as a dense baseline (normalised embeddings)."""

    def __init__(self, path: str, cfg: EvalConfig, label: str | None = None):
        import os

        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(str(path), device="cpu")
        self.cfg = cfg
        self.label = label or f"ST {str(path).rstrip('/').rsplit('/', 1)[-1]}"

    def encode(self, texts, *, query, prompt=None, dense=True, sparse=False, multivec=False) -> dict:
        # encode_query / encode_document apply the folder's "query" / "document" prompts, if it has any
        run = self.model.encode_query if side(query, prompt) == "query" else self.model.encode_document
        vecs = run(
            list(texts),
            batch_size=self.cfg.encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return {"dense_vecs": np.asarray(vecs, dtype=np.float32)}
