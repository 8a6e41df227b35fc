"""API keys: only their sha256 is stored; the key itself is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, insert, select

from service.store.tables import api_keys

KEY_PREFIX = "es-"
# The tenant of admin keys (EMBEDSEARCH_API_KEY's and the one generated on a first start): reserved, so
# that no tenant key can read or delete the admin's collections.
ADMIN_TENANT = "admin"
MAX_KEY_ID = 2**63 - 1  # key ids are 64-bit integers (SQLite's and PostgreSQL's largest)


class ReservedTenant(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool
    key_id: int | None  # None for the key given by EMBEDSEARCH_API_KEY


@dataclass(frozen=True)
class KeyRecord:
    """What is stored of a key: never the key itself."""

    id: int
    tenant: str
    prefix: str  # its first characters, to tell keys apart
    admin: bool
    created_at: datetime


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, tenant: str, *, admin: bool = False) -> str:
        return self.issue(tenant, admin=admin)[0]

    def issue(self, tenant: str, *, admin: bool = False) -> tuple[str, KeyRecord]:
        """A new key (shown once) and its record. Admin keys belong to the tenant ``admin``, and only they."""
        if (tenant == ADMIN_TENANT) != admin:
            raise ReservedTenant(f"the tenant {ADMIN_TENANT!r} is reserved for admin keys, and admin keys belong "
                                 f"to it; pick another name" if not admin else
                                 f"admin keys belong to the tenant {ADMIN_TENANT!r}, not {tenant!r}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            row = conn.execute(
                insert(api_keys).values(tenant=tenant, key_hash=hash_key(key), prefix=key[:10], admin=admin)
                .returning(api_keys.c.id, api_keys.c.tenant, api_keys.c.prefix, api_keys.c.admin,
                           api_keys.c.created_at)
            ).one()
        return key, KeyRecord(**row._mapping)

    def records(self) -> list[KeyRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys.c.id, api_keys.c.tenant, api_keys.c.prefix, api_keys.c.admin,
                                       api_keys.c.created_at).order_by(api_keys.c.id))
            return [KeyRecord(**row._mapping) for row in rows]

    def revoke(self, key_id: int) -> bool:
        """Delete a key; whether there was one (none has an id past a 64-bit integer: the database takes none)."""
        if not -MAX_KEY_ID - 1 <= key_id <= MAX_KEY_ID:
            return False
        with self.engine.begin() as conn:
            return conn.execute(delete(api_keys).where(api_keys.c.id == key_id)).rowcount > 0

    def lookup(self, key: str) -> Principal | None:
        digest = hash_key(key)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_keys.c.id, api_keys.c.tenant, api_keys.c.admin, api_keys.c.key_hash).where(
                    api_keys.c.key_hash == digest
                )
            ).first()
        if row is None or not secrets.compare_digest(row.key_hash, digest):
            return None
        return Principal(tenant=row.tenant, admin=bool(row.admin), key_id=row.id)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(api_keys)).scalar_one()
