"""Benchmarks: how fast is embedsearch, and how close to the limit of the machine?

``python -m benchmarks [suite ...] [--quick] [--out DIR]`` starts its own server on loopback (or targets
``--url``), runs the suites (``front``, ``workers``, ``embeddings``, ``upsert``, ``search``, ``stall``,
``peers``) and writes ``results.json``, ``report.md`` and PNG plots. Every service figure is measured in
the same run as an in-process baseline (the same model forward, the same FAISS index) and reported as a
ratio beside the absolute numbers.
"""

# The server's package sets process-wide runtime options before torch and FAISS load (OpenMP's wait
# policy); import it first so that the in-process baselines run under the same settings.
import service  # noqa: E402,F401

# The search suite's FAISS index types unless --indexes says otherwise ("IVF": sized for the collection).
DEFAULT_INDEXES = ("Flat", "HNSW32", "IVF")
