"""A throwaway PostgreSQL server for tests.

Debian's PostgreSQL binaries run a private cluster in a temporary directory, on 127.0.0.1 and a
random free port, tuned for speed over durability (no fsync). ``initdb`` refuses to run as root,
so as root every server command runs as the ``postgres`` user in a directory it owns.

Usage::

    with PostgresServer() as server:
        url = server.create_database("node_test")  # a SQLAlchemy URL
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
START_ATTEMPTS = 5
LOG_TAIL_LINES = 30
PORT_IN_USE = re.compile(r"could not bind|address already in use|could not create listen socket")


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH's, else the newest Debian one."""
    on_path = shutil.which("initdb")
    if on_path:
        folder = Path(on_path).resolve().parent
        if (folder / "pg_ctl").exists():
            return folder
    found = [initdb.parent for initdb in PG_ROOT.glob("*/bin/initdb") if initdb.is_file()]
    found = [folder for folder in found if (folder / "pg_ctl").exists()]
    if not found:
        return None
    return max(found, key=lambda folder: _version_key(folder.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PostgresServerError(RuntimeError):
    """The throwaway server could not be set up, started or stopped."""


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, removed on ``stop()``."""

    def __init__(self, pg_bin: Path | None = None) -> None:
        self.pg_bin = pg_bin or find_pg_bin()
        self.port: int | None = None
        self.dir: Path | None = None
        self._as_root = os.geteuid() == 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; raise with the log's tail on failure."""
        if self.port is not None:
            return self
        if self.pg_bin is None:
            raise PostgresServerError(
                "no PostgreSQL binaries: no initdb on PATH nor in /usr/lib/postgresql/*/bin "
                "(install Debian's postgresql package)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="pygrid-pg-"))
        try:
            if self._as_root:
                user = pwd.getpwnam(OS_USER)
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            self._start_on_free_port()
        except BaseException:
            self._remove_dir()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if self.dir is None:
            return
        try:
            if self.port is not None and (self.data_dir / "postmaster.pid").exists():
                self._pg_ctl_stop("fast")
        finally:
            self.port = None
            self._remove_dir()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        if self.dir is None:
            raise PostgresServerError("the server has not been started")
        return self.dir / "data"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the admin database, ``postgres``."""
        return self.url_for(SUPERUSER)

    def url_for(self, name: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``name``."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self._port()}/{quote(name, safe='')}"

    def dsn(self, name: str = SUPERUSER) -> str:
        """libpq connection string of database ``name``, for ``psycopg.connect``."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self._port()}/{quote(name, safe='')}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, closing any session still connected to it."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals -------------------------------------------------------------------------

    def _port(self) -> int:
        if self.port is None:
            raise PostgresServerError("the server is not running")
        return self.port

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def _start_on_free_port(self) -> None:
        """Start the server; another process may grab the port first, so retry a few times."""
        assert self.dir is not None
        log = self.dir / "log"
        for attempt in range(1, START_ATTEMPTS + 1):
            port = _free_port()
            offset = log.stat().st_size if log.exists() else 0
            options = (
                f"-k {shlex.quote(str(self.dir))} -h {HOST} -p {port}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(log), "-w", "start", "-o", options
                )
            except PostgresServerError as error:
                attempt_log = _read_from(log, offset)
                if attempt < START_ATTEMPTS and PORT_IN_USE.search(attempt_log.lower()):
                    continue
                raise PostgresServerError(
                    f"{error}\n--- last lines of {log} ---\n{_tail(attempt_log)}"
                ) from None
            self.port = port
            return

    def _pg_ctl_stop(self, mode: str) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")
        except PostgresServerError:
            # exit status 3: no server running (it died already); nothing left to stop
            if self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False) == 3:
                return
            if mode == "immediate":
                raise
            self._pg_ctl_stop("immediate")

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        """Run a PostgreSQL program (as the postgres user when root); return its exit status."""
        assert self.pg_bin is not None and self.dir is not None
        command = [str(self.pg_bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        # cwd: the postgres user may not be allowed into the caller's working directory
        result = subprocess.run(
            command, cwd=self.dir, capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PostgresServerError(
                f"{shlex.join(command)} exited with {result.returncode}:\n{_tail(output)}"
            )
        return result.returncode

    def _remove_dir(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])
