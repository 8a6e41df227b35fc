"""The bounds of one request, documented in the README's Limits: the HTTP layer's validation
(service/domain/validation.py) refuses what passes them with a 400, and the engine process checks every
frame from an HTTP worker against the same numbers (service/engine/checks.py)."""

MAX_DOCUMENTS = 1000  # per upsert
MAX_DELETE_IDS = 10 * MAX_DOCUMENTS
MAX_ID_LENGTH = 256
MAX_DIMENSION = 65536
MAX_INDEX_LENGTH = 128  # the column's size
MAX_QUERIES = 256
MAX_TOP_K = 1000
MAX_PAGE = 1000
MAX_SEARCH_HITS = 10_000  # queries x top_k of one search
MAX_RESPONSE_VALUES = 1 << 21  # vector values in one response (queries x top_k x dimension with include=vector)
MAX_METADATA_DEPTH = 32  # levels of nesting in a document's metadata, the metadata object itself the first
MAX_RESPONSE_BYTES = 64 << 20  # stored text and metadata in one answer (a search, a page of documents)
MAX_KEY_LENGTH = 256  # a batcher fairness key (a tenant name is at most 64)
