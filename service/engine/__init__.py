"""The engine: models and indexes behind one interface (engine.py)."""
