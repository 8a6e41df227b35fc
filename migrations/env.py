"""Alembic environment: runs migrations on the engine handed over by service.store.migrate, or on
the URL from the settings when invoked by the ``alembic`` command."""

from __future__ import annotations

from alembic import context

from service.settings import Settings
from service.store.db import make_engine
from service.store.tables import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().sqlalchemy_url
    engine = make_engine(url)
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()


def _migrate(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
