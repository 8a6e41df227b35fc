"""Schema upgrades through Alembic, the only way the schema is created or changed.

The scripts and their ``alembic.ini`` are the package ``service.migrations`` (the source tree's
``migrations/`` folder, mapped into the package by pyproject.toml), found through the import system:
the same in a checkout, an editable install and an installed wheel.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config(str(resources.files("service.migrations") / "alembic.ini"))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
