"""embedsearch: OpenAI-compatible embeddings on Gemma 3 and FAISS + SQL vector search."""

import os

# FAISS's OpenMP threads otherwise spin against torch's in the same process (measured: an IVF-PQ
# build-and-search 8x slower with torch imported); passive waiting costs torch nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
