"""The engine: models and indexes behind one interface (engine.py), in this process or in an engine process of
its own that HTTP workers reach through client.py (server.py, protocol.py)."""
