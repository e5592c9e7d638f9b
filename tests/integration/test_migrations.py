"""The Alembic migrations build exactly the schema the models describe, on both back-ends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pygrid.db import migrate
from pygrid.db.engine import make_engine
from pygrid.db.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    # Prepare
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    # Execute
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
        revision = context.get_current_revision()
    engine.dispose()
    # Assert
    assert differences == [], (
        "models changed without a migration: run alembic revision --autogenerate"
    )
    assert revision == migrate.head_revision()


def test_upgrade_is_idempotent(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
