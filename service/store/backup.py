"""Consistent backups of one collection, taken from SQL while the server runs.

A backup is a small SQLite file holding the collection's definition and every document with its
vector: all that the FAISS index is derived from. It is read in one transaction (a WAL snapshot on
SQLite, REPEATABLE READ on PostgreSQL), so concurrent writes are either wholly in it or not at all.
Restoring writes a new collection in one transaction; a running server finds it on first use and
builds its index from SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, insert, select
from tqdm import tqdm

from service.store.documents import new_collection_id
from service.store.tables import collections, documents

FORMAT = "embedsearch-collection-backup/1"
CHUNK = 2000


class BackupError(Exception):
    pass


def dump(engine: Engine, tenant: str, name: str, path: Path) -> int:
    """Write collection ``tenant/name`` to ``path`` (atomically); returns the number of documents."""
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    out = sqlite3.connect(partial)
    out.executescript(
        "CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE documents (id TEXT PRIMARY KEY, seq INTEGER, text TEXT, meta TEXT, vector BLOB);"
    )
    count = 0
    with engine.connect().execution_options(**options) as conn, conn.begin():
        row = conn.execute(select(collections).where(collections.c.tenant == tenant, collections.c.name == name)).first()
        if row is None:
            out.close()
            partial.unlink()
            raise BackupError(f"no collection {name!r} for tenant {tenant!r}")
        definition = {k: row._mapping[k] for k in ("name", "model", "dimension", "metric", "index_factory",
                                                   "last_position")}
        out.executemany("INSERT INTO info VALUES (?, ?)", [("format", FORMAT), ("collection", json.dumps(definition))])
        rows = conn.execution_options(yield_per=CHUNK).execute(
            select(documents.c.id, documents.c.seq, documents.c.text, documents.c.meta, documents.c.vector)
            .where(documents.c.collection_id == row.id)
            .order_by(documents.c.seq)
        )
        with tqdm(desc=f"backing up {name}", unit="doc") as bar:
            for chunk in rows.partitions():
                out.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
                                [(r.id, r.seq, r.text, json.dumps(r.meta), r.vector) for r in chunk])
                count += len(chunk)
                bar.update(len(chunk))
    out.commit()
    out.close()
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    return count


def restore(engine: Engine, path: Path, tenant: str, name: str | None = None) -> tuple[str, int]:
    """Create a collection from a backup (under ``name``, default its original name)."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        info = dict(source.execute("SELECT key, value FROM info"))
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a collection backup ({exc})") from None
    if info.get("format") != FORMAT:
        raise BackupError(f"{path} is not a collection backup of format {FORMAT}")
    definition = json.loads(info["collection"])
    name = name or definition["name"]
    total = source.execute("SELECT count(*) FROM documents").fetchone()[0]
    with engine.begin() as conn:
        if conn.execute(select(collections.c.id).where(collections.c.tenant == tenant, collections.c.name == name)).first():
            raise BackupError(f"collection {name!r} already exists for tenant {tenant!r}: restore under another --name")
        collection_id = new_collection_id(conn)
        conn.execute(insert(collections).values(id=collection_id, tenant=tenant, **{**definition, "name": name}))
        cursor = source.execute("SELECT id, seq, text, meta, vector FROM documents ORDER BY seq")
        with tqdm(total=total, desc=f"restoring {name}", unit="doc") as bar:
            while chunk := cursor.fetchmany(CHUNK):
                conn.execute(insert(documents), [
                    {"collection_id": collection_id, "id": i, "seq": s, "text": t, "meta": json.loads(m), "vector": v}
                    for i, s, t, m, v in chunk
                ])
                bar.update(len(chunk))
    source.close()
    return name, total
