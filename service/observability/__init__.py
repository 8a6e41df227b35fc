"""Operations: Prometheus metrics (metrics.py), request ids and structured logs (logging.py), the ASGI
wrapper that feeds both (middleware.py), and GET /metrics and GET /ready (routes.py).

Everything stateful here (the metrics registry) is made by the app factory and owned by the app;
the only module-level object is the request-id context variable, which holds no shared state.
This package imports nothing itself, so that the CLI can use ``logging`` before torch is imported.
"""
