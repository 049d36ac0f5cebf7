"""The evaluation stage: a model's retrieval quality in the M3 paper's terms, and the champion.

Where each part lives:

- ``config``: :class:`EvalConfig`, the profile's ``evaluate:`` section.
- ``data``: the evaluation sets behind ``load_datasets(spec)`` (BEIR, MIRACL, MLDR, XQuAD-R, ...).
- ``datasets``: the pipeline's own sets: held-out ICT queries, MLDR-style long documents.
- ``encoders``: what a model must give (dense / lexical / multi-vector outputs), M3 and baselines.
- ``index``: exact search per retrieval function (faiss, inverted index, late interaction), fusion.
- ``runs``: one run per mode (and BM25) of one dataset.
- ``metrics``: trec_eval measures over the runs, every system on every dataset.
- ``report``: paper-shaped tables, markdown, charts: the files of the ``report`` artifact.
- ``champion``: comparison with ``model/champion`` and promotion by compare-and-swap.
- ``model_folder``: ``m3 eval`` on a model folder.

The Prefect flows that run all this are in ``flows/evaluate.py``.
"""
