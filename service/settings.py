"""Service settings, read once from ``EMBEDSEARCH_*`` environment variables.

Every field maps to ``EMBEDSEARCH_<FIELD NAME IN UPPER CASE>``; the README lists them all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import msgspec

ENV_PREFIX = "EMBEDSEARCH_"
SECRETS = ("api_key", "milvus_token")  # shown masked (and a password inside a URL too)


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    # SQLAlchemy URL; empty means an SQLite file in the data dir.
    database_url: str = ""
    # Admin key accepted in addition to the keys stored in the database.
    api_key: str = ""
    # Comma-separated public names of the models this server loads and serves.
    models: str = "gemma3:270m"
    # Optional TOML or JSON file with extra model registry entries.
    models_file: str = ""
    # Where converted checkpoints are cached; empty means <data_dir>/models.
    models_dir: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA GPUs that support it, else fp32) | float32 | bfloat16 | float16
    # Dynamic batching: padded tokens per forward pass, longest wait to fill a batch, how long under
    # load to wait for the last batch's clients to come back (a fraction of that batch's forward time),
    # pending inputs before new requests are refused with 503.
    batch_tokens: int = 0  # 0 = 2048 on CPU, 131072 on CUDA
    # On a GPU, replay CUDA graphs captured at start-up (bucketed batch shapes) instead of launching each
    # kernel from Python; false: always eager. Ignored on the CPU.
    cuda_graphs: bool = True
    batch_max_inputs: int = 256
    batch_wait_ms: float = 2.0
    batch_patience: float = 0.25
    queue_max_inputs: int = 16384
    # Request limits.
    max_inputs: int = 2048
    # Tokens summed across a request's inputs (after truncation), as OpenAI's limit.
    max_request_tokens: Annotated[int, msgspec.Meta(ge=1)] = 300_000
    max_body_bytes: int = 32 * 1024 * 1024
    truncate: bool = False  # default for requests that do not say; over-long inputs are cut instead of refused
    # Every request into the engine (an embedding, an index lock) waits at most this long: then a 503.
    engine_deadline_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Where collections' vectors live: "faiss" (in this server's memory, snapshotted to the data dir) or
    # "milvus" (a Milvus collection per collection; SQL stays the source of truth). See README, "Scaling out".
    vector_backend: Literal["faiss", "milvus"] = "faiss"
    # The Milvus to use: a cluster's URL (http://host:19530) with its token ("user:password" or an API key) if
    # it needs one, or a local path ending in .db for milvus-lite in-process (one server process only).
    # Empty: <data_dir>/milvus.db.
    milvus_uri: str = ""
    milvus_token: str = ""
    # Index tuning (not stored in snapshots: a change applies to every index at the next start).
    hnsw_ef_search: Annotated[int, msgspec.Meta(ge=1)] = 128
    hnsw_ef_construction: Annotated[int, msgspec.Meta(ge=1)] = 128
    ivf_nprobe: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: about sqrt(lists)
    # Seconds between FAISS index snapshots (writes are durable in SQL at once; snapshots shorten replay);
    # a collection whose last snapshot took T seconds waits at least 10 T.
    snapshot_seconds: float = 10.0
    # HTTP worker processes, all feeding one engine process (models and indexes); 0 runs everything in
    # one process. Unset: half the CPU cores, 1 to 8.
    workers: Annotated[int, msgspec.Meta(ge=0, le=256)] | None = None
    # Collections one tenant may hold (0 = no limit): past it, creating one is a 403 collection_quota_exceeded.
    max_collections: Annotated[int, msgspec.Meta(ge=0)] = 1000
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    # Per-API-key token bucket: average requests per second (0 = no limit) and burst (0 = one second's worth).
    rate_limit_rps: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=0)] = 0

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'embedsearch.db').resolve()}"

    @property
    def milvus_location(self) -> str:
        return self.milvus_uri or str((self.data_dir / "milvus.db").resolve())

    @property
    def model_cache(self) -> Path:
        return Path(self.models_dir) if self.models_dir else self.data_dir / "models"

    @property
    def http_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, min(8, (os.cpu_count() or 2) // 2))

    @property
    def served_models(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from the environment; ``overrides`` (e.g. CLI flags) win over it."""
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = environ.get(ENV_PREFIX + name.upper())
            if value is not None:
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(raw, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).rpartition(" - at `$.")
            name = where.rstrip("`").split(".")[0].split("[")[0]
            if not message or name not in cls.__struct_fields__:
                raise SystemExit(f"error: invalid setting: {exc}") from None
            raise SystemExit(f"error: {ENV_PREFIX}{name.upper()}={raw[name]!r} is invalid: {message}") from None

    def shown(self, name: str) -> str:
        """Field ``name``'s value as ``embedsearch settings`` prints it: secrets masked, and any password in a URL."""
        value = getattr(self, name)
        if value is None or value == "":
            return ""
        if name in SECRETS:
            return "****"
        return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1****@", str(value))


def _decode_path(type_: type, value: Any) -> Any:
    if type_ is Path:
        return Path(value)
    raise NotImplementedError
