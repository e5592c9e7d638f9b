"""Engines for SQLite and PostgreSQL, with URL checks that give an operator a clear message."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_SCHEMES = ("sqlite", "postgresql")


class DatabaseURLError(ValueError):
    """DATABASE_URL cannot be used."""


def normalise_database_url(url: str) -> str:
    """Check ``url`` and pin PostgreSQL to the psycopg 3 driver the package ships with."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            f"DATABASE_URL is malformed: {mask_database_url(url)!r}; expected e.g. "
            "postgresql://user:password@host:5432/dbname or sqlite:////abs/path.db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in SUPPORTED_SCHEMES:
        raise DatabaseURLError(
            f"DATABASE_URL uses {backend!r}; PyGrid supports {', '.join(SUPPORTED_SCHEMES)}"
        )
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        if not parsed.database:
            raise DatabaseURLError("DATABASE_URL names no database (…/dbname at the end)")
    return parsed.render_as_string(hide_password=False)


def mask_database_url(url: str) -> str:
    """``url`` with its password replaced by ***, safe to log or show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed URL>"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned per back-end: SQLite in WAL mode with a busy timeout, PostgreSQL pooled."""
    url = normalise_database_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("connect_args", {"connect_timeout": 10})
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets several server processes read while one writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def ping(engine: Engine) -> None:
    """Raise if the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
