"""Alembic environment: migrates ``pygrid.db.models.Base.metadata`` online."""

from alembic import context
from sqlalchemy import pool

from pygrid.db.engine import make_engine
from pygrid.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    """Run the migrations in one transaction on the configured database."""
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("PyGrid migrations run online only: use `pygrid db upgrade`")
run_migrations()
