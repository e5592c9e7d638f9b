"""Fixtures that read like the user's story: backend -> settings -> app -> client -> users.

Every test that asks for ``database_url`` runs twice: on SQLite and on a throwaway PostgreSQL 15
that the harness starts (tests/support/postgres.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pygrid.auth.roles import Role
from tests.support.users import PASSWORD, login


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One PostgreSQL server for the whole run; each test gets its own database in it."""
    from tests.support.postgres import PostgresServer, find_pg_bin

    if find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail(
                "PostgreSQL binaries are missing in CI: scripts/setup.sh should install them"
            )
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each back-end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url: str = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture(params=["node", "network"])
def app_kind(request: pytest.FixtureRequest) -> str:
    """Both servers share the users, status and meta routes."""
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, app_kind: str) -> Any:
    """Settings of a server whose data lives in the test's temp dir."""
    from pygrid.config import ServerSettings

    return ServerSettings(
        app=app_kind,
        id="test",
        port=5000,
        data_dir=tmp_path / "data",
        database_url=database_url,
        owner_email="owner@example.org",
        owner_password=PASSWORD,
        # Tests close FL cycles explicitly (scheduler.run_once); e2e tests run the real thread.
        scheduler_interval=0,
    )


@pytest.fixture
def app(settings: Any) -> Iterator[Any]:
    """The Flask app of a Node or Network built by its factory."""
    if settings.app == "node":
        from pygrid.apps.node import create_app
    else:
        from pygrid.apps.network import create_app
    application = create_app(settings)
    yield application
    if "pygrid.scheduler" in application.extensions:
        application.extensions["pygrid.scheduler"].stop()
    application.extensions["pygrid.db"].engine.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    """A test client speaking HTTP to ``app`` in-process."""
    return app.test_client()


@pytest.fixture
def owner_token(client: Any) -> str:
    """A token for the Owner created at first start."""
    return login(client, "owner@example.org")


@pytest.fixture
def user_token(app: Any, client: Any) -> Callable[[Role], str]:
    """Make a user with ``role`` (directly through the service) and return their token."""
    from sqlalchemy.orm import Session

    from pygrid import users

    def make(role: Role) -> str:
        email = f"{role}-{uuid.uuid4().hex[:6]}@example.org"
        with Session(app.extensions["pygrid.db"].engine) as session:
            users.create_user(session, email, PASSWORD, role)
        return login(client, email)

    return make
