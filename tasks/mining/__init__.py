"""The mine stage: queries → train-set rows with hard negatives (ANCE, Xiong et al. 2020, arXiv 2007.00808).

A teacher ranks the passage pool for each training query; the shared rules drop positives and likely
false negatives and sample negatives from a rank window below the top.

* ``config``: the ``mine`` section of a profile (MineConfig and its encode / search / rescore parts).
* ``pool``: the passage pool and training queries of a ``queries`` artifact.
* ``rules``: what may not be a negative, the rank window, padding: the same for every teacher.
* ``stats``: the additive counts of a run and the teacher-score distributions.
* ``bm25``: the BM25 teacher: mining with the shared index (``tasks.bm25``), its query shards.
* ``teachers``: dense teachers and re-scorers, loaded once per worker process.
* ``embed``: the pool and the queries encoded partition by partition into cached store shards.
* ``search``: exact, IVF or HNSW faiss search shard by shard, merged exactly (``m3.topk``).
* ``sample``: the rules applied to the merged dense candidates, after an optional re-scoring.
* ``driver``: the dense phases strung together over any map function (Dask in tests, Prefect
  tasks on Dask in ``flows/mine.py``).
"""
