"""The throwaway PostgreSQL harness serves a real PostgreSQL 15+ and leaves nothing behind."""

import os
import re
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer, find_pg_bin

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_bin() -> Path:
    """PostgreSQL binaries: skipped locally when absent, a failure in CI."""
    found = find_pg_bin()
    if found is None:
        if os.environ.get("CI", "").lower() in ("", "0", "false"):
            pytest.skip("no PostgreSQL binaries (initdb): apt-get install postgresql")
        pytest.fail("CI is set but no PostgreSQL binaries (initdb) were found")
    return found


def test_server_creates_queries_and_drops_a_database_then_cleans_up(pg_bin: Path) -> None:
    # Prepare
    server = PostgresServer(pg_bin).start()
    data_dir = server.data_dir
    try:
        # Execute
        url = server.create_database("harness_check")
        with psycopg.connect(server.dsn("harness_check")) as conn:
            row = conn.execute("select version()").fetchone()
            server_version = conn.info.server_version
        server.drop_database("harness_check")
        with psycopg.connect(server.dsn()) as conn:
            left = conn.execute(
                "select count(*) from pg_database where datname = %s", ("harness_check",)
            ).fetchone()
    finally:
        server.stop()

    # Assert
    assert re.fullmatch(r"postgresql\+psycopg://postgres@127\.0\.0\.1:\d+/harness_check", url)
    assert row is not None and row[0].startswith("PostgreSQL ")
    assert server_version >= 150000, row[0]
    assert left == (0,)
    assert not data_dir.exists()
    assert server.dir is None


def test_context_manager_stops_the_server_and_removes_its_directory(pg_bin: Path) -> None:
    # Prepare / Execute
    with PostgresServer(pg_bin) as server:
        data_dir = server.data_dir
        admin_url = server.url
        with psycopg.connect(server.dsn()) as conn:
            one = conn.execute("select 1").fetchone()

    # Assert
    assert one == (1,)
    assert re.fullmatch(r"postgresql\+psycopg://postgres@127\.0\.0\.1:\d+/postgres", admin_url)
    assert not data_dir.exists()
