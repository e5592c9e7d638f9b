"""A Node's membership of a Network, with real ``pygrid network`` and ``pygrid node`` processes
on 127.0.0.1: join, heartbeats with the catalogue, the saved credential, removal, leave.

Heartbeats every 0.5 s make "online", "stale" and "offline" quick to reach; every check waits
for a condition with a generous deadline and never asserts how long something took.

The last section drives ``Membership`` in-process against a scripted Network (a tiny HTTP
server on 127.0.0.1) for answers a real Network gives only when broken: 5xx, a forgotten
credential.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.support.servers import Server, free_port, kill, running, stop, wait_for
from tests.support.users import PASSWORD

OWNER = "owner@example.org"
HEARTBEAT = "0.5"
CSV = b"age,income\n34,52000.5\n51,61000.25\n29,38000.75\n"
FORGED = "pgj_1_" + "x" * 43


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names
    return session


def _login(http: requests.Session, url: str) -> None:
    response = http.post(
        f"{url}/users/login", json={"email": OWNER, "password": PASSWORD}, timeout=30
    )
    assert response.status_code == 200, response.text
    http.headers["Authorization"] = f"Bearer {response.json()['token']}"


@dataclass
class Network:
    """A running ``pygrid network`` and an admin session on it."""

    server: Server
    http: requests.Session

    @property
    def url(self) -> str:
        return self.server.url

    def join_token(self, uses: int = 1) -> dict[str, Any]:
        """A new join token (``token`` is the text a Node needs)."""
        response = self.http.post(
            f"{self.url}/registry/join-tokens", json={"name": "test", "uses": uses}, timeout=30
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def uses_left(self, token_id: int) -> int:
        tokens = self.http.get(f"{self.url}/registry/join-tokens", timeout=30).json()["tokens"]
        return int(next(t["uses_left"] for t in tokens if t["id"] == token_id))

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``GET /registry/nodes`` by node id."""
        response = self.http.get(f"{self.url}/registry/nodes", timeout=30)
        assert response.status_code == 200, response.text
        return {n["id"]: n for n in response.json()["nodes"]}

    def status(self, node_id: str) -> str | None:
        node = self.nodes().get(node_id)
        return None if node is None else str(node["status"])

    def requests_to(self, path: str) -> int:
        """How many requests for ``path`` the Network's access log shows."""
        return self.server.output().count(f"POST {path} ")


@contextmanager
def network_server(tmp_path: Path, port: int | None = None) -> Iterator[Network]:
    """A Network with its data under ``tmp_path/network`` (the same on a restart)."""
    port = port or free_port()
    args = ["network", "--port", str(port), "--data-dir", str(tmp_path / "network")]
    env = {
        "PYGRID_HOME": str(tmp_path / "home"),
        "PYGRID_OWNER_EMAIL": OWNER,
        "PYGRID_OWNER_PASSWORD": PASSWORD,
    }
    log = tmp_path / f"network-{port}.log"
    if log.exists():  # a restart: keep what the first run logged
        log = log.with_suffix(".again.log")
    with running(args, port, log, env=env) as server, _http() as http:
        _login(http, server.url)
        yield Network(server, http)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with network_server(tmp_path) as started:
        yield started


def node_args(name: str, port: int, data_dir: Path, network_url: str) -> list[str]:
    return [
        "node", "--id", name, "--port", str(port), "--data-dir", str(data_dir),
        "--network", network_url,
    ]  # fmt: skip


@contextmanager
def node_server(
    tmp_path: Path,
    network_url: str,
    token: str | None,
    *,
    name: str = "alice",
    port: int | None = None,
    log: str = "alice.log",
    heartbeat: str = HEARTBEAT,
    extra: tuple[str, ...] = (),
) -> Iterator[Server]:
    """A Node joining ``network_url``; the token, if any, in its environment as users should."""
    port = port or free_port()
    env = {
        "PYGRID_HOME": str(tmp_path / "home"),
        "PYGRID_OWNER_EMAIL": OWNER,
        "PYGRID_OWNER_PASSWORD": PASSWORD,
        "PYGRID_HEARTBEAT_SECONDS": heartbeat,
    }
    if token is not None:
        env["NETWORK_TOKEN"] = token
    args = [*node_args(name, port, tmp_path / name, network_url), *extra]
    with running(args, port, tmp_path / log, env=env) as server:
        yield server


def saved(data_dir: Path) -> list[dict[str, Any]]:
    """What ``network.json`` holds."""
    path = data_dir / "network.json"
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())["networks"]
    return entries


def _credential_saved(data_dir: Path) -> bool:
    return any(entry.get("credential") for entry in saved(data_dir))


def upload(url: str, name: str = "people", tags: str = "health,tabular") -> dict[str, Any]:
    with _http() as http:
        _login(http, url)
        response = http.post(
            f"{url}/data-centric/datasets",
            data={"name": name, "tags": tags, "description": "census sample"},
            files={"data": ("people.csv", CSV)},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
def test_a_node_joins_and_its_catalogue_reaches_the_network(
    network: Network, tmp_path: Path
) -> None:
    token = network.join_token()

    with node_server(tmp_path, network.url, token["token"]) as alice:
        joined = wait_for("alice online", lambda: network.status("alice") == "online")
        view = network.nodes()["alice"]
        dataset = upload(alice.url)
        published = wait_for(
            "the dataset in the Network's registry",
            lambda: network.nodes()["alice"]["datasets"],
        )
        own = requests.get(f"{alice.url}/catalogue", timeout=30).json()
        log = alice.output()

    assert joined
    assert view["url"] == alice.url
    assert view["heartbeat_seconds"] == 0.5
    assert view["datasets"] == []
    assert published == own["datasets"]
    assert published[0]["id"] == dataset["id"]
    assert published[0]["name"] == "people"
    assert published[0]["tags"] == ["health", "tabular"]
    assert published[0]["rows"] == 3
    assert "52000.5" not in json.dumps(published)
    assert network.uses_left(token["id"]) == 0
    assert f"joined the Network at {network.url} as alice" in log
    assert token["token"] not in log
    path = tmp_path / "alice" / "network.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [entry] = saved(tmp_path / "alice")
    assert entry["network_url"] == network.url and entry["node_id"] == "alice"
    assert entry["credential"].startswith("pgn_")


@pytest.mark.slow
def test_a_node_started_before_its_network_joins_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    with network_server(tmp_path, port) as first:
        token = first.join_token()
    url = f"http://127.0.0.1:{port}"

    with node_server(tmp_path, url, token["token"]) as alice:
        wait_for("a retry in the log", lambda: "cannot reach the Network" in alice.output())
        with network_server(tmp_path, port) as network:
            wait_for("alice online", lambda: network.status("alice") == "online", timeout=90)
            assert network.uses_left(token["id"]) == 0
        log = alice.output()

    assert f"cannot reach the Network at {url}" in log
    assert "retrying in" in log
    assert f"joined the Network at {url} as alice" in log


@pytest.mark.slow
def test_a_killed_node_goes_stale_and_comes_back_without_spending_its_token(
    network: Network, tmp_path: Path
) -> None:
    token = network.join_token(uses=2)
    port = free_port()
    with node_server(tmp_path, network.url, token["token"], port=port) as alice:
        wait_for("alice online", lambda: network.status("alice") == "online")
        # Killed between the Network's answer and the write, a Node would lose its credential.
        wait_for("the credential saved", lambda: _credential_saved(tmp_path / "alice"))
        assert network.uses_left(token["id"]) == 1

        kill(alice.process)

        wait_for("alice stale", lambda: network.status("alice") == "stale")

    # No join token this time: the credential saved in network.json is all it needs.
    with node_server(tmp_path, network.url, None, port=port, log="alice-again.log") as again:
        wait_for(
            "alice online again",
            lambda: network.status("alice") == "online",
            explain=lambda: (
                f"{network.nodes()}\n{again.output()}\n{network.server.output()[-3000:]}"
            ),
        )
        log = wait_for("its log to say so", lambda: _when("back in the Network", again))

    assert network.uses_left(token["id"]) == 1
    assert network.requests_to("/registry/join") == 1
    assert "back in the Network" in log
    assert "joined the Network" not in log


@pytest.mark.slow
def test_a_node_removed_by_an_admin_stops_heartbeating_and_keeps_serving(
    network: Network, tmp_path: Path
) -> None:
    token = network.join_token()
    with node_server(tmp_path, network.url, token["token"]) as alice:
        wait_for("alice online", lambda: network.status("alice") == "online")

        removed = network.http.delete(f"{network.url}/registry/nodes/alice", timeout=30)

        assert removed.status_code == 204
        wait_for("the removal in alice's log", lambda: "removed from the Network" in alice.output())
        heartbeats = network.requests_to("/registry/heartbeat")
        # Ten intervals: a Node that kept going would have sent several more by now.
        time.sleep(10 * float(HEARTBEAT))
        assert network.requests_to("/registry/heartbeat") == heartbeats
        assert network.server.output().count('"POST /registry/heartbeat HTTP/1.1" 410') == 1
        assert requests.get(f"{alice.url}/status", timeout=30).status_code == 200
        assert requests.get(f"{alice.url}/catalogue", timeout=30).status_code == 200

    assert "alice" not in network.nodes()
    assert all("credential" not in entry for entry in saved(tmp_path / "alice"))
    assert "a new join token" in alice.output()


@pytest.mark.slow
def test_a_forged_join_token_is_refused_and_the_node_keeps_serving(
    network: Network, tmp_path: Path
) -> None:
    with node_server(tmp_path, network.url, FORGED) as alice:
        wait_for("the refusal in the log", lambda: "refused to let alice join" in alice.output())
        status = requests.get(f"{alice.url}/status", timeout=30)
        catalogue = requests.get(f"{alice.url}/catalogue", timeout=30)
        log = alice.output()

    assert status.status_code == 200
    assert catalogue.status_code == 200
    assert "invalid_join_token" in log
    assert "alice" not in network.nodes()
    assert saved(tmp_path / "alice") == []


@pytest.mark.slow
def test_a_node_with_no_token_and_no_credential_says_how_to_get_one(
    network: Network, tmp_path: Path
) -> None:
    with node_server(tmp_path, network.url, None) as alice:
        wait_for("the error in the log", lambda: "no join token" in alice.output())
        status = requests.get(f"{alice.url}/status", timeout=30)

    assert status.status_code == 200
    assert "pygrid network-token create" in alice.output()
    assert network.requests_to("/registry/join") == 0


@pytest.mark.slow
def test_sigterm_leaves_the_network_and_shows_offline(network: Network, tmp_path: Path) -> None:
    token = network.join_token()
    # Heartbeats every 30 s: the Node would stay "online" for 90 s unless it says it leaves.
    with node_server(tmp_path, network.url, token["token"], heartbeat="30") as alice:
        wait_for("alice online", lambda: network.status("alice") == "online")

        stop(alice.process)

    assert network.status("alice") == "offline"
    wait_for("the leave in the access log", lambda: network.requests_to("/registry/leave") == 1)
    assert f"left the Network at {network.url}" in alice.output()


@pytest.mark.slow
def test_replicas_join_once_and_another_takes_over_when_the_speaker_dies(
    network: Network, tmp_path: Path
) -> None:
    token = network.join_token()
    with node_server(tmp_path, network.url, token["token"], extra=("--num-replicas", "2")) as alice:
        wait_for("alice online", lambda: network.status("alice") == "online")
        speaker = wait_for("the joining replica's pid", lambda: _pid_of("joined the", alice))
        replicas = [p.pid for p in psutil.Process(alice.process.pid).children()]
        assert speaker in replicas and len(replicas) == 2

        os.kill(speaker, signal.SIGKILL)

        wait_for("another replica to take over", lambda: _pid_of("back in the", alice))
        heartbeats = network.requests_to("/registry/heartbeat")
        wait_for(
            "heartbeats from the new speaker",
            lambda: network.requests_to("/registry/heartbeat") > heartbeats + 2,
        )
        assert network.status("alice") == "online"

    assert network.requests_to("/registry/join") == 1
    assert network.uses_left(token["id"]) == 0


def _when(message: str, server: Server) -> str | None:
    """The server's output once it contains ``message``."""
    output = server.output()
    return output if message in output else None


def _pid_of(message: str, server: Server) -> int | None:
    """The pid of the replica that logged ``message`` (lines are ``[time] [pid] [LEVEL] ...``)."""
    for line in server.output().splitlines():
        if message in line:
            return int(line.split("] [")[1])
    return None


# ---- Membership against a scripted Network ---------------------------------------------------


class ScriptedNetwork:
    """An HTTP server answering ``/registry/*`` from a script; it records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None, dict[str, Any]]] = []
        self.script: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.credentials = iter(f"pgn_{'c' * 30}{i}" for i in range(1000))
        network = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                network.requests.append((self.path, self.headers.get("Authorization"), body))
                status, answer = network.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def then(self, path: str, *answers: tuple[int, dict[str, Any]]) -> None:
        """Answer the next requests for ``path`` with ``answers``, in order; then as usual."""
        self.script.setdefault(path, []).extend(answers)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.script.get(path):
            return self.script[path].pop(0)
        if path == "/registry/join":
            return 201, {"node_id": body["node_id"], "credential": next(self.credentials)}
        if path == "/registry/heartbeat":
            return 200, {"node_id": body["node_id"], "status": "online"}
        return 200, {"node_id": body["node_id"], "status": "offline"}

    def sent(self, path: str) -> list[tuple[str | None, dict[str, Any]]]:
        """(Authorization, body) of every request for ``path`` so far."""
        return [(auth, body) for p, auth, body in list(self.requests) if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": message, "detail": {"code": code}}


@pytest.fixture
def scripted() -> Iterator[ScriptedNetwork]:
    network = ScriptedNetwork()
    yield network
    network.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-off of 0.05 s doubling to 0.1 s, refusals retried after 0.05 s."""
    from pygrid.network import membership

    monkeypatch.setattr(membership, "FIRST_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(membership, "MAX_RETRY_SECONDS", 0.1)
    monkeypatch.setattr(membership, "REFUSED_RETRY_SECONDS", 0.05)


TOKEN = "pgj_7_" + "t" * 43


@contextmanager
def member(
    data_dir: Path, network_url: str, token: str | None = TOKEN, **options: Any
) -> Iterator[Any]:
    """A started Membership of Node alice publishing an empty catalogue; stopped afterwards."""
    from pygrid.config import ServerSettings
    from pygrid.network.membership import Membership

    settings = ServerSettings(
        app="node",
        id="alice",
        port=5000,
        data_dir=data_dir,
        network_url=network_url,
        network_token=token,
        heartbeat_seconds=0.2,
    )
    catalogue = {"node_id": "alice", "datasets": [], "processes": [], "load": {}}
    membership = Membership(settings, lambda: catalogue, **options)
    membership.start()
    try:
        yield membership
    finally:
        membership.stop()


def test_join_backs_off_while_the_network_answers_5xx(
    scripted: ScriptedNetwork, tmp_path: Path, fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    down = error(503, "unavailable", "database is down")
    scripted.then("/registry/join", down, down, down)

    with caplog.at_level(logging.INFO, "pygrid.network.membership"), member(tmp_path, scripted.url):
        wait_for("a heartbeat", lambda: scripted.sent("/registry/heartbeat"))

    joins = scripted.sent("/registry/join")
    assert len(joins) == 4
    assert joins[0][1]["join_token"] == TOKEN and joins[0][1]["url"] == "http://127.0.0.1:5000"
    assert (
        joins[0][1]["heartbeat_seconds"] == 0.2 and joins[0][1]["catalogue"]["node_id"] == "alice"
    )
    delays = [m for m in caplog.messages if "answered 503" in m]
    assert [m.rsplit("retrying in ", 1)[1] for m in delays] == ["0.05 s", "0.1 s", "0.1 s"]
    assert "database is down" in delays[0]
    assert scripted.sent("/registry/heartbeat")[0][0] == "Bearer pgn_" + "c" * 30 + "0"


def test_a_refused_join_logs_the_networks_message_and_tries_again(
    scripted: ScriptedNetwork, tmp_path: Path, fast_retries: None, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.then("/registry/join", error(409, "node_id_taken", "node id 'alice' is taken"))

    with (
        caplog.at_level(logging.INFO, "pygrid.network.membership"),
        member(tmp_path, scripted.url) as membership,
    ):
        wait_for("a heartbeat", lambda: scripted.sent("/registry/heartbeat"))
        state = membership.state

    assert state == "joined"
    assert any("node id 'alice' is taken" in m and "node_id_taken" in m for m in caplog.messages)


def test_a_forgotten_credential_is_dropped_and_the_node_joins_again(
    scripted: ScriptedNetwork, tmp_path: Path
) -> None:
    with member(tmp_path, scripted.url):
        wait_for("a heartbeat", lambda: scripted.sent("/registry/heartbeat"))
    first = saved(tmp_path)[0]["credential"]
    scripted.then(
        "/registry/heartbeat", error(401, "unknown_credential", "this Network knows no Node")
    )

    with member(tmp_path, scripted.url):
        wait_for("a second join", lambda: len(scripted.sent("/registry/join")) == 2)
        wait_for(
            "a heartbeat with it", lambda: saved(tmp_path)[0].get("credential") not in (None, first)
        )
        second = saved(tmp_path)[0]["credential"]
        wait_for(
            "heartbeats with the new credential",
            lambda: scripted.sent("/registry/heartbeat")[-1][0] == f"Bearer {second}",
        )


def test_a_removed_node_stops_and_will_not_rejoin_with_the_same_token(
    scripted: ScriptedNetwork, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.then("/registry/heartbeat", error(410, "node_removed", "Node 'alice' was removed"))

    with (
        caplog.at_level(logging.INFO, "pygrid.network.membership"),
        member(tmp_path, scripted.url) as membership,
    ):
        wait_for("the removal", lambda: membership.state == "removed")
        heartbeats = len(scripted.sent("/registry/heartbeat"))
    with member(tmp_path, scripted.url) as again:
        wait_for("the same token refused", lambda: again.state == "removed")
    with member(tmp_path, scripted.url, token="pgj_8_" + "n" * 43) as renewed:
        wait_for("a join with a new token", lambda: renewed.state == "joined")

    assert heartbeats == 1
    assert len(scripted.sent("/registry/join")) == 2
    # Only the Node that joined again says goodbye: a removed one has nothing to leave.
    assert len(scripted.sent("/registry/leave")) == 1
    assert any("removed from the Network" in m for m in caplog.messages)


def test_one_process_per_data_dir_talks_and_the_other_takes_over_on_stop(
    scripted: ScriptedNetwork, tmp_path: Path
) -> None:
    with member(tmp_path, scripted.url) as first:
        # The first one started holds the lock before the second tries for it (no race).
        wait_for("the first to take the lock", lambda: first.holds_lock)
        with member(tmp_path, scripted.url, lock_retry_seconds=0.05) as second:
            wait_for("a heartbeat", lambda: scripted.sent("/registry/heartbeat"))
            assert first.holds_lock and not second.holds_lock

            first.stop()

            wait_for("the take-over", lambda: second.holds_lock)
            left = len(scripted.sent("/registry/heartbeat"))
            wait_for("heartbeats again", lambda: len(scripted.sent("/registry/heartbeat")) > left)

    assert len(scripted.sent("/registry/join")) == 1
    assert len(scripted.sent("/registry/leave")) == 2  # one per stop, each by the lock holder
    credential = saved(tmp_path)[0]["credential"]
    assert scripted.sent("/registry/leave")[-1] == (f"Bearer {credential}", {"node_id": "alice"})


def test_a_network_that_never_answers_does_not_hold_up_stop(tmp_path: Path) -> None:
    with member(tmp_path, f"http://127.0.0.1:{free_port()}") as membership:
        wait_for("a join attempt", lambda: membership.state == "joining")

    assert membership.state == "stopped"
    assert saved(tmp_path) == []
