"""Dense-teacher hard-negative mining that scales out on Dask (ANCE, Xiong et al. 2020, arXiv 2007.00808).

``teachers`` loads encoders once per worker process, ``embed`` encodes the pool partition by
partition into store shards (cached by teacher + pool + encode config), ``search`` runs exact, IVF or
HNSW faiss search shard by shard with an exact, order-independent top-k merge, ``sample`` applies the
exclusions, margins and rank window of ``tasks.mine`` to the candidates, and ``driver`` strings the
phases together over any map function (a Dask client in tests, Prefect tasks on Dask in the flow).
"""
