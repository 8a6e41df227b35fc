"""The domain: collections, documents, search and embeddings, in plain Python and numpy types.

It validates what clients ask for, orders writes (SQL first, then the engine) and plans searches; it
raises the errors of service/errors.py and knows nothing of HTTP (service/api/) or of how the engine
keeps its models and indexes (service/engine/)."""
