"""Everything a server checks and prepares before it answers a request.

Each failure is a ``StartupError`` with one line that says what is wrong and how to fix it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pygrid.config import ServerSettings
from pygrid.db import migrate
from pygrid.db.engine import DatabaseURLError, make_engine, mask_database_url, ping
from pygrid.secret_key import SecretKeyError, load_or_create_secret_key
from pygrid.storage import BlobStore, open_store


class StartupError(RuntimeError):
    """The server cannot start; the message is meant for the operator."""


@dataclass
class Prepared:
    """What ``prepare`` made ready for the app."""

    engine: Engine
    secret_key: str
    blobs: BlobStore
    owner_created: bool


def check_data_dir(settings: ServerSettings) -> None:
    """Create the data dir (0700) and make sure this process can write to it."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"data dir {path} is not writable: {exc.strerror or exc}") from None


def open_database(settings: ServerSettings) -> Engine:
    """An engine on a reachable database, migrated to the newest schema."""
    try:
        url = settings.resolved_database_url
    except DatabaseURLError as exc:
        raise StartupError(str(exc)) from None
    engine = make_engine(url)
    step = "is unreachable"
    try:
        ping(engine)
        step = "could not be migrated"
        migrate.upgrade(url)
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise StartupError(f"database {mask_database_url(url)} {step}: {reason}") from None
    return engine


def prepare(settings: ServerSettings) -> Prepared:
    """Check the data dir, database, secret key and blob store; create the Owner if asked to."""
    from pygrid import users
    from pygrid.errors import PyGridError

    check_data_dir(settings)
    engine = open_database(settings)
    given = settings.secret_key.get_secret_value() if settings.secret_key else None
    try:
        secret_key = load_or_create_secret_key(settings.data_dir, given)
    except SecretKeyError as exc:
        raise StartupError(str(exc)) from None
    try:
        blobs = open_store(settings.resolved_blob_url)
        blobs.check()
    except Exception as exc:  # any store failure stops the start with its reason
        raise StartupError(
            f"blob store {settings.resolved_blob_url} is not usable: {exc}"
        ) from None
    owner_created = False
    if settings.owner_email and settings.owner_password:
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            try:
                owner_created = users.ensure_owner(
                    session, settings.owner_email, settings.owner_password.get_secret_value()
                )
            except PyGridError as exc:
                raise StartupError(f"cannot create the Owner: {exc.message}") from None
    return Prepared(engine=engine, secret_key=secret_key, blobs=blobs, owner_created=owner_created)
