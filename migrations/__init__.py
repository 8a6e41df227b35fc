"""Alembic migrations, installed as the package ``service.migrations`` (see pyproject.toml), so that an
installed wheel finds them through the package and not through the source tree."""
