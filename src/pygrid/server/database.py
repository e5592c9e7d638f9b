"""The Flask extension holding the engine, and one session per request."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker


class Database:
    """Owns the engine and session factory of one app (``init_app`` style)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app`` and close the request's session when the request ends."""
        app.extensions["pygrid.db"] = self
        app.teardown_appcontext(_close_session)


def db_session() -> Session:
    """The current request's session, opened on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["pygrid.db"].sessions()
    session: Session = g.db_session
    return session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
