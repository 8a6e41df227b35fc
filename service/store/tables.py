"""SQLAlchemy table definitions; the schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    # sha256 of the key: keys are 256-bit random strings, so a fast hash is enough to make a leaked
    # table useless, and lookups stay a single indexed query.
    Column("key_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    Index("ix_api_keys_tenant", "tenant"),
)

# JSON on SQLite, JSONB (indexable, order-insensitive) on PostgreSQL.
JsonType = JSON().with_variant(JSONB(), "postgresql")

collections = Table(
    "collections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("model", String(128), nullable=True),
    Column("dimension", Integer, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("index_factory", String(128), nullable=False),
    # Write-log position: every upsert takes fresh positions (they are the documents' FAISS ids),
    # every removal logs one; the index snapshot on disk records the position it reflects.
    Column("last_position", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("tenant", "name", name="uq_collections_tenant_name"),
)

# High-water marks of ids that are never handed out twice (``collections``: every collection's id, so a
# deleted collection's id never names another one; migration 0004 says why this is not AUTOINCREMENT).
id_counters = Table(
    "id_counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("last", BigInteger, nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    # Code-point order on every database, so pages (ordered by id) and their cursors agree everywhere.
    Column("id", String(256).with_variant(String(256, collation="C"), "postgresql"), primary_key=True),
    # FAISS id: a write-log position, never reused, so a replaced document gets a new one.
    Column("seq", BigInteger, nullable=False),
    Column("text", Text, nullable=True),
    Column("meta", JsonType, nullable=False),
    Column("vector", LargeBinary, nullable=False),  # little-endian float32, the source of truth
    UniqueConstraint("collection_id", "seq", name="uq_documents_collection_seq"),
)

removals = Table(
    "removals",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("position", BigInteger, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

# The Milvus backend's progress: the last write-log position applied to a collection's Milvus collection.
# Its row is also the lock under which each server applies writes, so that they reach Milvus in order.
index_positions = Table(
    "index_positions",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("position", BigInteger, nullable=False),
)
