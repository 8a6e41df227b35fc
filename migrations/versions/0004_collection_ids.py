"""Collection ids are never handed out twice: a high-water mark that only grows.

SQLite without AUTOINCREMENT gives a new row the largest id in the table plus one, so deleting the newest
collection and creating another reused its id, and an HTTP worker that still held the old (tenant, name) ->
id answered with the new collection's documents (issue #24). Adding AUTOINCREMENT to SQLite would rebuild
the ``collections`` table, and with foreign keys on, dropping the old table cascades into every document.
So the ids come from this counter instead, on SQLite and PostgreSQL alike
(service/store/documents.py ``new_collection_id``), seeded above every id in use.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    counters = op.create_table(
        "id_counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("last", sa.BigInteger(), nullable=False),
    )
    highest = op.get_bind().execute(sa.text("SELECT coalesce(max(id), 0) FROM collections")).scalar_one()
    op.bulk_insert(counters, [{"name": "collections", "last": highest}])


def downgrade() -> None:
    op.drop_table("id_counters")
