"""Alembic: upgrade from empty, downgrade, upgrade again, and no drift from the table models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.store import migrate
from service.store.tables import metadata

pytestmark = pytest.mark.unit


@pytest.fixture
def empty_engine(engine):
    metadata.drop_all(engine)  # the shared fixture creates tables; migrations start from nothing
    return engine


def test_upgrade_downgrade_upgrade_without_drift(empty_engine):
    engine = empty_engine
    migrate.upgrade(engine)
    assert {"api_keys", "collections", "documents", "removals"} <= set(inspect(engine).get_table_names())
    migrate.downgrade(engine, "base")
    assert not {"api_keys", "collections", "documents", "removals"} & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
