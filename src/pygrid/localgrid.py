"""The local grid: a Network and Nodes running as background processes on this machine.

``pygrid up``, ``pygrid down`` and ``pygrid status`` are thin wrappers around :class:`LocalGrid`.
Everything lives under ``<pygrid home>/local/``: ``grid.json`` (which processes belong to the
grid), ``credentials.json`` (the Owner of every member, mode 0600), ``logs/<name>.log`` and
``data/<name>/``. ``up --workers N`` adds N Workers per Node (``pygrid worker``): members with no
port, healthy while their process runs, each holding its Node's worker token in its environment.
Each Node joins the local Network with a join token ``up`` makes for it (docs/network.md), and
counts as started only once the Network lists it online.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psutil
import requests

from pygrid.config import AppKind, pygrid_home
from pygrid.serve import PortInUse, check_port_free

HOST = "127.0.0.1"
NETWORK_NAME = "network"
WORKER_APP = "worker"
DEFAULT_NODES = ("alice", "bob", "charlie", "dan")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
OWNER_EMAIL = "owner@pygrid.local"
LOG_TAIL_LINES = 15
STATE_VERSION = 1
# Shorter than STOP_TIMEOUT: on `down` a Worker's running job is killed before the Worker is.
WORKER_GRACE_SECONDS = 10.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Inherited, these would make every member share one database, blob store, data dir or key.
_SHARED_ENV = (
    "DATABASE_URL",
    "PYGRID_BLOB_URL",
    "PYGRID_DATA_DIR",
    "SECRET_KEY",
    "PROMETHEUS_MULTIPROC_DIR",
    # ... or claim one URL to the Network, or join another Network with someone else's token.
    "PYGRID_PUBLIC_URL",
    "NETWORK",
    "NETWORK_TOKEN",
)
# A Worker gets its own token and nothing of the Owner's.
_NOT_FOR_WORKERS = (
    "PYGRID_OWNER_EMAIL",
    "PYGRID_OWNER_PASSWORD",
    "PYGRID_WORKER_TOKEN",
    "PYGRID_NODE",
)

HealthState = Literal["healthy", "unhealthy", "down"]
# A Node as the local Network sees it: a status of docs/network.md, "not registered" when the
# Network does not list it, "unknown" when the Network does not answer.
NetworkView = Literal["online", "stale", "offline", "not registered", "unknown"]
Event = Literal["started", "healthy"]


class LocalGridError(Exception):
    """Why the local grid cannot start or stop: ``str()`` is one line; ``log_tail`` adds context."""

    def __init__(self, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = list(log_tail)


class AlreadyUp(LocalGridError):
    """``up`` found a grid with live members; nothing was changed."""

    def __init__(self, members: list[Member]) -> None:
        super().__init__("the local grid is already up")
        self.members = members


@dataclass(frozen=True)
class Member:
    """One process of the grid: where it listens, which process runs it, where it writes.

    A Worker listens nowhere (``port`` None) and names the Node it serves in ``node``.
    """

    name: str
    app: str
    host: str
    port: int | None
    log: Path
    data_dir: Path
    pid: int | None = None
    create_time: float | None = None
    node: str | None = None

    @property
    def url(self) -> str | None:
        """The base URL the member serves on; None for a Worker."""
        return None if self.port is None else f"http://{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """Where to find the member, for people: its URL, or the Node a Worker serves."""
        return self.url or f"Worker of {self.node}"

    def to_json(self) -> dict[str, Any]:
        """The member as ``grid.json`` stores it."""
        return {
            "name": self.name,
            "app": self.app,
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "create_time": self.create_time,
            "log": str(self.log),
            "data_dir": str(self.data_dir),
            "node": self.node,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        """A member read back from ``grid.json``."""
        return cls(
            name=str(data["name"]),
            app=str(data["app"]),
            host=str(data["host"]),
            port=None if data.get("port") is None else int(data["port"]),
            log=Path(data["log"]),
            data_dir=Path(data["data_dir"]),
            pid=None if data.get("pid") is None else int(data["pid"]),
            create_time=None if data.get("create_time") is None else float(data["create_time"]),
            node=None if data.get("node") is None else str(data["node"]),
        )

    def process(self) -> psutil.Process | None:
        """The member's process if it still runs and is the one ``up`` started (not a reused PID)."""
        if self.pid is None or self.create_time is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.create_time) < 0.01
            if not same or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return proc

    @property
    def alive(self) -> bool:
        """Whether the member's own process is still running."""
        return self.process() is not None


@dataclass(frozen=True)
class Health:
    """What ``status`` reports about one member."""

    member: Member
    alive: bool
    health: HealthState
    version: str | None = None
    uptime_seconds: float | None = None
    # For a Node: what the local Network says of it; None for the Network and Workers.
    network_status: NetworkView | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of ``pygrid status --format json``."""
        return {
            "name": self.member.name,
            "app": self.member.app,
            "url": self.member.url,
            "pid": self.member.pid,
            "alive": self.alive,
            "health": self.health,
            "version": self.version,
            "uptime_seconds": self.uptime_seconds,
            "network_status": self.network_status,
        }


@dataclass
class _Started:
    member: Member
    popen: subprocess.Popen[bytes]
    log_offset: int
    answered: bool = False
    # A Node is up once the Network lists it online, not merely once it answers /status.
    in_network: bool = False


class LocalGrid:
    """A Network and Nodes on 127.0.0.1, their state kept under ``home``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home if home is not None else pygrid_home() / "local"

    @property
    def state_file(self) -> Path:
        """``grid.json``: the members and the processes that run them."""
        return self.home / "grid.json"

    @property
    def credentials_file(self) -> Path:
        """``credentials.json`` (0600): the Owner's email and password on every member."""
        return self.home / "credentials.json"

    @property
    def logs_dir(self) -> Path:
        """Where each member appends its output."""
        return self.home / "logs"

    @property
    def data_root(self) -> Path:
        """Where each member keeps its database, blobs and secret key."""
        return self.home / "data"

    # -- reading the state -------------------------------------------------------------------

    def plan(
        self,
        nodes: Sequence[str],
        base_port: int = 5000,
        network_port: int = 7000,
        workers: int = 0,
    ) -> list[Member]:
        """The members ``up`` would start, validated: the Network, the Nodes, then the Workers."""
        names = [n.strip() for n in nodes if n.strip()]
        if not names:
            raise LocalGridError("give at least one Node name, e.g. --nodes alice,bob")
        if workers < 0:
            raise LocalGridError(f"the number of Workers per Node cannot be negative: {workers}")
        for name in names:
            if not _NAME.match(name):
                raise LocalGridError(
                    f"invalid Node name {name!r}: use letters, digits, '.', '_' or '-' "
                    "(at most 64, starting with a letter or digit)"
                )
            if name == NETWORK_NAME:
                raise LocalGridError(
                    f"{NETWORK_NAME!r} is the Network's name; pick another Node name"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise LocalGridError(f"Node names must be unique; repeated: {', '.join(duplicates)}")
        ports = {NETWORK_NAME: network_port} | {n: base_port + i for i, n in enumerate(names)}
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise LocalGridError(f"port {port} for {name} is outside 1-65535")
        node_ports = {p: n for n, p in ports.items() if n != NETWORK_NAME}
        if network_port in node_ports:
            raise LocalGridError(
                f"the Network's port {network_port} is also Node {node_ports[network_port]}'s port; "
                "change --network-port or --base-port"
            )
        servers = [
            self._member(name, AppKind.network if name == NETWORK_NAME else AppKind.node, port)
            for name, port in ports.items()
        ]
        return servers + [
            self._member(f"{node}-worker-{i}", WORKER_APP, None, node=node)
            for node in names
            for i in range(1, workers + 1)
        ]

    def _member(self, name: str, app: str, port: int | None, node: str | None = None) -> Member:
        return Member(
            name=name,
            app=str(app),
            host=HOST,
            port=port,
            log=self.logs_dir / f"{name}.log",
            # A Worker's is its --work-dir: each job's private temporary folder goes there.
            data_dir=self.data_root / name,
            node=node,
        )

    def members(self) -> list[Member]:
        """The members recorded in ``grid.json``; empty when there is none."""
        try:
            data = json.loads(self.state_file.read_text())
            return [Member.from_json(m) for m in data["members"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LocalGridError(
                f"cannot read {self.state_file} ({exc}); "
                "if no grid is running, delete it and try again"
            ) from None

    def running(self) -> list[Member]:
        """The recorded members whose processes still run."""
        return [m for m in self.members() if m.alive]

    def health(self) -> list[Health]:
        """Each recorded member: is its process alive, does ``GET /status`` answer 200, and for
        a Node, what the local Network says of it."""
        members = self.members()
        if not members:
            return []
        network = next((m for m in members if m.app == AppKind.network), None)
        with ThreadPoolExecutor(max_workers=len(members) + 1) as pool:
            registry = pool.submit(_registry_or_none, network)
            report = list(pool.map(_health, members))
            statuses = registry.result()
        return [
            replace(h, network_status=_network_view(statuses, h.member.name))
            if h.member.app == AppKind.node
            else h
            for h in report
        ]

    # -- up ---------------------------------------------------------------------------------

    def up(
        self,
        nodes: Sequence[str] = DEFAULT_NODES,
        base_port: int = 5000,
        network_port: int = 7000,
        *,
        workers: int = 0,
        timeout: float = START_TIMEOUT,
        on_event: Callable[[Member, Event], None] | None = None,
    ) -> list[Member]:
        """Start the grid and wait until every member is healthy; AlreadyUp if it runs already.

        Every check (names, ports, writable folders, credentials) happens before anything
        starts; if a member fails to start, the ones already started are stopped again.
        ``workers`` Workers per Node start once the Nodes answer, each Node's with a fresh
        worker token (the previous ``up``'s tokens named ``local-<node>`` are revoked).
        """
        planned = self.plan(nodes, base_port, network_port, workers)
        self._make_home()
        with self._lock():
            recorded = self.members()
            if any(m.alive for m in recorded):
                raise AlreadyUp(recorded)
            for member in planned:
                _check_port(member)
            self._check_writable(planned)
            email, password = self._credentials(planned)
            # Whatever is recorded belongs to a grid whose processes have all gone.
            self.state_file.unlink(missing_ok=True)
            return self._start(planned, email, password, timeout, on_event or _ignore)

    def _make_home(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LocalGridError(f"cannot create {self.home}: {_reason(exc)}") from None
        if not self.home.is_dir():
            raise LocalGridError(f"{self.home} is not a folder")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two `up`s (or an `up` and a `down`) at once would each start or stop half a grid.
        path = self.home / ".lock"
        try:
            handle = path.open("a")
        except OSError as exc:
            raise LocalGridError(f"cannot write to {self.home}: {_reason(exc)}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LocalGridError(
                    f"another pygrid up/down is using {self.home}; wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_writable(self, members: Sequence[Member]) -> None:
        folders = [self.home, self.logs_dir, self.data_root, *(m.data_dir for m in members)]
        for folder in folders:
            _check_folder_writable(folder)
        for member in members:
            if member.log.exists() and (
                not member.log.is_file() or not os.access(member.log, os.W_OK)
            ):
                raise LocalGridError(f"cannot append to the log file {member.log}")

    def _credentials(self, members: Sequence[Member]) -> tuple[str, str]:
        path = self.credentials_file
        if path.exists():
            try:
                data = json.loads(path.read_text())
                return str(data["email"]), str(data["password"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LocalGridError(
                    f"cannot read the Owner credentials in {path} ({exc})"
                ) from None
        for member in members:
            database = member.data_dir / f"{member.app}.db"
            if database.exists():
                # Its Owner was created with the lost password: new credentials would not log in.
                raise LocalGridError(
                    f"{path} is missing but {member.name} already has an Owner in {database}; "
                    f"restore the file, or delete {self.data_root} to start afresh"
                )
        email, password = OWNER_EMAIL, secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise LocalGridError(f"cannot create {path}: {_reason(exc)}") from None
        with os.fdopen(fd, "w") as handle:
            json.dump({"email": email, "password": password}, handle, indent=2)
            handle.write("\n")
        return email, password

    def _start(
        self,
        members: Sequence[Member],
        email: str,
        password: str,
        timeout: float,
        on_event: Callable[[Member, Event], None],
    ) -> list[Member]:
        env = {k: v for k, v in os.environ.items() if k not in _SHARED_ENV}
        env |= {"PYGRID_OWNER_EMAIL": email, "PYGRID_OWNER_PASSWORD": password}
        deadline = time.monotonic() + timeout
        started: list[_Started] = []
        network = members[0]
        nodes = [m for m in members if m.app == AppKind.node]
        workers = [m for m in members if m.app == WORKER_APP]
        try:
            # Nodes join the Network when they start, so it has to answer first.
            started.append(self._spawn(network, [], env))
            self._save([s.member for s in started])
            on_event(started[-1].member, "started")
            self._wait(started, deadline, timeout, on_event)
            join_tokens = _join_tokens(network, nodes, email, password)
            for node in nodes:
                # In the environment, not argv: `ps` shows every command line to every user.
                node_env = env | {"NETWORK_TOKEN": join_tokens[node.name]}
                started.append(self._spawn(node, ["--network", str(network.url)], node_env))
                self._save([s.member for s in started])
                on_event(started[-1].member, "started")
            self._wait(started, deadline, timeout, on_event, network)
            # Workers need a token, and a token needs a Node that answers.
            worker_env = {k: v for k, v in env.items() if k not in _NOT_FOR_WORKERS}
            tokens = {n.name: _worker_token(n, email, password) for n in nodes} if workers else {}
            for worker in workers:
                node_url = next(str(n.url) for n in nodes if n.name == worker.node)
                extra = ["--node", node_url, "--grace-seconds", f"{WORKER_GRACE_SECONDS:g}"]
                # In the environment, not argv: `ps` shows every command line to every user.
                token_env = worker_env | {"PYGRID_WORKER_TOKEN": tokens[str(worker.node)]}
                started.append(self._spawn(worker, extra, token_env))
                self._save([s.member for s in started])
                on_event(started[-1].member, "started")
            self._wait(started, deadline, timeout, on_event, network)
        except BaseException:
            self._abort(started)
            raise
        for entry in started:
            # The member outlives this process on purpose: stop Popen from warning that it runs.
            entry.popen.returncode = 0
        return [s.member for s in started]

    def _spawn(self, member: Member, extra: list[str], env: dict[str, str]) -> _Started:
        for folder in (self.data_root, member.data_dir, member.log.parent):
            folder.mkdir(exist_ok=True, mode=0o700)
        if member.app == WORKER_APP:
            identity = ["--label", member.name, "--work-dir", str(member.data_dir)]
        else:
            identity = [
                "--id", member.name,
                "--port", str(member.port),
                "--data-dir", str(member.data_dir),
            ]  # fmt: skip
        command = [sys.executable, "-m", "pygrid.cli", member.app, *identity, *extra]
        # Logs hold request lines and startup messages: only the owner of the grid reads them.
        log_fd = os.open(member.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            offset = log.tell()
            stamp = datetime.now().astimezone().isoformat(timespec="seconds")
            log.write(f"--- pygrid up {stamp}: {member.name} ({member.where})\n".encode())
            log.flush()
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: Ctrl-C in this terminal must not reach a background server,
                # and its working directory must not pin wherever the user ran `up`.
                start_new_session=True,
                cwd=self.home,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = None
        return _Started(replace(member, pid=popen.pid, create_time=create_time), popen, offset)

    def _wait(
        self,
        started: list[_Started],
        deadline: float,
        timeout: float,
        on_event: Callable[[Member, Event], None],
        network: Member | None = None,
    ) -> None:
        """Until every started member answers (and every Node is online in ``network``)."""
        with _http() as session:
            while True:
                joining = [
                    s for s in started if s.answered and not s.in_network and _joins(s, network)
                ]
                if joining and network is not None:
                    statuses = _registry(session, network) or {}
                    for entry in joining:
                        if statuses.get(entry.member.name) == "online":
                            entry.in_network = True
                            on_event(entry.member, "healthy")
                pending = [s for s in started if not s.answered]
                for entry in pending:
                    code = entry.popen.poll()
                    if code is not None:
                        member = entry.member
                        when = f"before answering {member.url}/status" if member.url else "at start"
                        raise LocalGridError(
                            f"{member.name} exited (code {code}) {when}; its log is {member.log}",
                            _tail(member.log, entry.log_offset),
                        )
                    # A Worker serves no URL: it is healthy while its process runs.
                    if entry.member.url is None or _answers(session, entry.member, timeout=2.0):
                        entry.answered = True
                        if not _joins(entry, network):
                            on_event(entry.member, "healthy")
                if all(s.answered and (s.in_network or not _joins(s, network)) for s in started):
                    return
                if time.monotonic() > deadline:
                    raise _late(started, network, timeout)
                time.sleep(POLL_INTERVAL)

    def _abort(self, started: list[_Started]) -> None:
        processes = [p for s in started if (p := s.member.process()) is not None]
        _terminate(processes)
        for entry in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry.popen.wait(timeout=1)
        self.state_file.unlink(missing_ok=True)

    def _save(self, members: Sequence[Member]) -> None:
        data = {"version": STATE_VERSION, "members": [m.to_json() for m in members]}
        # Written before waiting, so a `down` can stop members even if this `up` is killed.
        fd, tmp = tempfile.mkstemp(dir=self.home, prefix=".grid.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- down -------------------------------------------------------------------------------

    def stop(self) -> list[Member]:
        """Stop the recorded members that still run (SIGTERM, then SIGKILL after 15 s).

        Returns the members that were running. ``grid.json`` is removed.
        """
        if not self.state_file.exists():
            return []
        with self._lock():
            members = self.members()
            processes = {m.name: m.process() for m in members}
            # Workers first, while their Nodes can still take their results; then the Nodes, so
            # that they can still tell the Network they are leaving.
            for app in (WORKER_APP, AppKind.node, AppKind.network):
                _terminate([p for m in members if m.app == app and (p := processes[m.name])])
            self.state_file.unlink(missing_ok=True)
            return [m for m in members if processes[m.name] is not None]


def _ignore(member: Member, event: Event) -> None:
    """The default ``on_event``."""


def _joins(entry: _Started, network: Member | None) -> bool:
    """Whether ``entry`` is a Node that must show online in ``network`` to count as started."""
    return network is not None and entry.member.app == AppKind.node


def _late(started: Sequence[_Started], network: Member | None, timeout: float) -> LocalGridError:
    late = next(s for s in started if not s.answered or (_joins(s, network) and not s.in_network))
    member = late.member
    if late.answered and network is not None:
        what = f"did not show online in the Network at {network.url}"
    else:
        what = f"did not answer {member.url}/status"
    return LocalGridError(
        f"{member.name} {what} within {timeout:g} s; its log is {member.log}",
        _tail(member.log, late.log_offset),
    )


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_port(member: Member) -> None:
    if member.port is None:
        return  # a Worker listens nowhere
    try:
        check_port_free(member.host, member.port)
    except PortInUse as exc:
        what = exc.what
        flag = "--network-port" if member.app == AppKind.network else "--base-port"
        raise LocalGridError(
            f"{what} (needed by {member.name}); pick free ports with {flag}"
        ) from None


def _check_folder_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == folder else f"{folder}: "
        raise LocalGridError(f"cannot use {where}{existing} is not a folder")
    try:
        # os.access is not enough: it says yes to root on a read-only file system.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise LocalGridError(f"cannot write to {existing}: {_reason(exc)}") from None
        raise LocalGridError(f"cannot use {existing}: {_reason(exc)}") from None


def _http() -> requests.Session:
    session = requests.Session()
    # Only ever talk to 127.0.0.1 directly: a proxy from the environment must not see it.
    session.trust_env = False
    return session


def _answers(session: requests.Session, member: Member, timeout: float) -> bool:
    """Whether the member itself (not some other server on its port) answers /status with 200."""
    try:
        response = session.get(f"{member.url}/status", timeout=(0.5, timeout))
        body = response.json() if response.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return False
    return (
        isinstance(body, dict) and body.get("id") == member.name and body.get("app") == member.app
    )


def _health(member: Member) -> Health:
    proc = member.process()
    if proc is None:
        return Health(member, alive=False, health="down")
    if member.url is None:
        uptime = None
        with contextlib.suppress(psutil.Error):
            uptime = time.time() - proc.create_time()
        return Health(member, alive=True, health="healthy", uptime_seconds=uptime)
    try:
        with _http() as session:
            response = session.get(f"{member.url}/status", timeout=(0.5, 2.0))
        body = response.json()
    except (requests.RequestException, ValueError):
        return Health(member, alive=True, health="unhealthy")
    if not isinstance(body, dict):
        return Health(member, alive=True, health="unhealthy")
    healthy = response.status_code == 200 and body.get("id") == member.name
    uptime = body.get("uptime_seconds")
    return Health(
        member,
        alive=True,
        health="healthy" if healthy else "unhealthy",
        version=body.get("version"),
        uptime_seconds=float(uptime) if isinstance(uptime, int | float) else None,
    )


def _registry(session: requests.Session, network: Member) -> dict[str, str] | None:
    """``{node id: status}`` from the Network's ``GET /registry/nodes``; None if it does not answer."""
    try:
        response = session.get(f"{network.url}/registry/nodes", timeout=(0.5, 2.0))
        response.raise_for_status()
        return {str(n["id"]): str(n["status"]) for n in response.json()["nodes"]}
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def _registry_or_none(network: Member | None) -> dict[str, str] | None:
    if network is None or not network.alive:
        return None
    with _http() as session:
        return _registry(session, network)


def _network_view(statuses: dict[str, str] | None, node: str) -> NetworkView:
    if statuses is None:
        return "unknown"
    found = statuses.get(node)
    if found in ("online", "stale", "offline"):
        return found  # type: ignore[return-value]
    return "not registered"


def _join_tokens(
    network: Member, nodes: Sequence[Member], email: str, password: str
) -> dict[str, str]:
    """A new join token (1 use) on the local Network for each Node, named ``local-<node>``.

    The previous ``up``'s tokens of that name are revoked: a Node that kept its credential did
    not need its token, and a token nobody uses should not stay valid. A Node the Network still
    lists but whose data dir lost its credential could never heartbeat again: it is removed, so
    that it can join afresh under its own name.
    """
    from pygrid.network.membership import CREDENTIALS_FILE, CredentialStore

    base = f"{network.url}/registry"
    names = {f"local-{n.name}" for n in nodes}
    try:
        with _http() as session:
            login = session.post(
                f"{network.url}/users/login",
                json={"email": email, "password": password},
                timeout=(0.5, 30),
            )
            login.raise_for_status()
            session.headers["Authorization"] = f"Bearer {login.json()['token']}"
            listed = session.get(f"{base}/join-tokens", timeout=(0.5, 30))
            listed.raise_for_status()
            for old in listed.json()["tokens"]:
                if old["name"] in names and not old.get("revoked"):
                    revoked = session.delete(
                        f"{base}/join-tokens/{int(old['id'])}", timeout=(0.5, 30)
                    )
                    revoked.raise_for_status()
            registered = _registry(session, network) or {}
            for node in nodes:
                saved = CredentialStore(node.data_dir / CREDENTIALS_FILE)
                if node.name in registered and not saved.credential(str(network.url), node.name):
                    removed = session.delete(f"{base}/nodes/{node.name}", timeout=(0.5, 30))
                    if removed.status_code != 404:
                        removed.raise_for_status()
            made = {}
            for node in nodes:
                created = session.post(
                    f"{base}/join-tokens",
                    json={"name": f"local-{node.name}", "uses": 1},
                    timeout=(0.5, 30),
                )
                created.raise_for_status()
                made[node.name] = str(created.json()["token"])
            return made
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise LocalGridError(f"cannot create join tokens on the Network: {exc}") from None


def _worker_token(node: Member, email: str, password: str) -> str:
    """A new worker token on ``node`` for its local Workers; the previous ``up``'s is revoked."""
    name = f"local-{node.name}"
    base = f"{node.url}/data-centric/worker-tokens"
    try:
        with _http() as session:
            login = session.post(
                f"{node.url}/users/login",
                json={"email": email, "password": password},
                timeout=(0.5, 30),
            )
            login.raise_for_status()
            session.headers["Authorization"] = f"Bearer {login.json()['token']}"
            listed = session.get(base, timeout=(0.5, 30))
            listed.raise_for_status()
            for old in listed.json()["tokens"]:
                # Its Workers went with the last grid: a token nobody uses should not stay valid.
                if old["name"] == name and old.get("revoked_at") is None:
                    session.delete(f"{base}/{int(old['id'])}", timeout=(0.5, 30)).raise_for_status()
            created = session.post(base, json={"name": name}, timeout=(0.5, 30))
            created.raise_for_status()
            return str(created.json()["token"])
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        raise LocalGridError(f"cannot create a worker token on {node.name}: {exc}") from None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(processes: Sequence[psutil.Process]) -> None:
    """SIGTERM ``processes``, wait up to STOP_TIMEOUT, then SIGKILL them and their children."""
    family: list[psutil.Process] = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            # Gunicorn's workers: reaped by their master on SIGTERM, killed with it on SIGKILL.
            family.extend(proc.children(recursive=True))
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    remaining = [p for p in [*processes, *family] if _running(p)]
    deadline = time.monotonic() + STOP_TIMEOUT
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if _running(p)]
    for proc in remaining:
        with contextlib.suppress(psutil.Error):
            # psutil refuses to signal a PID that now belongs to another process.
            proc.kill()


def _tail(log: Path, offset: int, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines this run wrote to ``log``."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
