"""The Python client of an embedsearch server: ``Client`` and ``AsyncClient``.

    from embedsearch import Client
    client = Client()  # $EMBEDSEARCH_BASE_URL (default http://localhost:8000/v1), $EMBEDSEARCH_API_KEY
    kb = client.create_collection("kb", model="gemma3:270m")
    kb.upsert([{"id": "bread", "text": "A recipe for bread", "metadata": {"topic": "food"}}])
    kb.search("how to bake", top_k=3, filter={"topic": "food"})

Framework integrations: ``embedsearch.langchain`` and ``embedsearch.llama_index`` (extras ``langchain`` and
``llama-index``). Nothing here needs torch, transformers or FAISS: ``pip install embedsearch`` is the client
alone; the server is ``pip install 'embedsearch[server]'``.
"""

from importlib.metadata import PackageNotFoundError, version

from embedsearch.async_client import AsyncClient, AsyncCollection
from embedsearch.client import Client, Collection
from embedsearch.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EmbedsearchError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
)
from embedsearch.types import ApiKey, CollectionInfo, Document, Hit, Model, Page

try:
    __version__ = version("embedsearch")
except PackageNotFoundError:  # a checkout run in place, not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__", "Client", "AsyncClient", "Collection", "AsyncCollection",
    "CollectionInfo", "Document", "Hit", "Page", "Model", "ApiKey",
    "EmbedsearchError", "APIConnectionError", "APITimeoutError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError", "RequestTooLargeError",
    "RateLimitError", "InternalServerError", "ServiceUnavailableError",
]
