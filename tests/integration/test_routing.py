"""``/nodes/<id>/<path>`` on a real ``pygrid network``: requests reach a real ``pygrid node``
with their credentials, bodies stream both ways past the Network's own size limit, and a Node
that is unknown, down, silent or stalling mid-answer gets the documented answer without holding
up anyone else. The last tests drive the Network app in-process (Flask's test client) against a
stand-in Node, for the same answers in a fraction of the time."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.support.network import (
    NETWORK_OWNER,
    FakeNode,
    join,
    joined_node,
    login,
    network_server,
)
from tests.support.servers import Server, free_port, kill

NODE_OWNER = {
    "PYGRID_OWNER_EMAIL": "alice@example.org",
    "PYGRID_OWNER_PASSWORD": "alice-password-1",
}
NODE_LIMIT = 8 * 1024 * 1024
ROUTE_TIMEOUT = 3
MIB = 1024 * 1024
# The Network refuses bodies over 1 MiB on its own routes; routed bodies are the Node's business.
NETWORK_LIMIT = MIB


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("network")
    env = {"PYGRID_MAX_CONTENT_LENGTH": str(NETWORK_LIMIT)}
    with network_server(tmp, route_timeout=ROUTE_TIMEOUT, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def node(network: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Node that joined the Network as ``alice`` (pygrid node --network)."""
    tmp = tmp_path_factory.mktemp("alice")
    env = {**NODE_OWNER, "PYGRID_MAX_CONTENT_LENGTH": str(NODE_LIMIT)}
    with joined_node(tmp, network.url, "alice", env=env) as server:
        yield server


@pytest.fixture
def fake(network: Server) -> Iterator[tuple[str, FakeNode]]:
    """A stand-in Node joined under a fresh id: (id, node)."""
    with FakeNode() as stand_in:
        node_id = f"fake-{uuid.uuid4().hex[:8]}"
        join(network.url, node_id, stand_in.url)
        yield node_id, stand_in


def routed(network: Server, node_id: str, path: str) -> str:
    return f"{network.url}/nodes/{node_id}/{path.lstrip('/')}"


@pytest.mark.slow
def test_credentials_go_to_the_node_and_the_node_decides(network: Server, node: Server) -> None:
    # Prepare
    email, password = NODE_OWNER.values()
    network_token = login(network.url, *NETWORK_OWNER.values())
    # Execute
    logged_in = requests.post(
        routed(network, "alice", "/users/login"),
        json={"email": email, "password": password},
        timeout=30,
    )
    token = logged_in.json()["token"]
    me = requests.get(
        routed(network, "alice", "/users/me"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    anonymous = requests.get(routed(network, "alice", "/users/me"), timeout=30)
    with_the_networks_token = requests.get(
        routed(network, "alice", "/users/me"),
        headers={"Authorization": f"Bearer {network_token}"},
        timeout=30,
    )
    # Assert
    assert logged_in.status_code == 200 and logged_in.headers["X-PyGrid-Node"] == "alice"
    assert me.status_code == 200 and me.json()["email"] == email
    assert me.headers["Content-Type"] == "application/json"
    assert me.headers["X-PyGrid-Node"] == "alice"
    for refused in (anonymous, with_the_networks_token):
        assert refused.status_code == 401, refused.text
        assert set(refused.json()) == {"error", "detail"}
        assert refused.headers["X-PyGrid-Node"] == "alice"


@pytest.mark.slow
def test_the_query_string_reaches_the_node(network: Server, node: Server) -> None:
    direct = requests.get(f"{node.url}/model-centric/get-model?worker_id=w", timeout=30)
    through = requests.get(
        routed(network, "alice", "/model-centric/get-model?worker_id=w"), timeout=30
    )
    assert through.status_code == direct.status_code == 422
    assert through.json() == direct.json()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_only_the_documented_headers_cross(
    network: Server, fake: tuple[str, FakeNode], method: str
) -> None:
    # Prepare
    node_id, _ = fake
    headers = {
        "Authorization": "Bearer node-token",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Cookie": "network-session=secret",
        "X-Forwarded-For": "10.0.0.1",
        "X-Custom": "1",
        "Connection": "keep-alive, X-Custom",
    }
    # Execute
    answer = requests.request(
        method,
        routed(network, node_id, "/a/b%20c/echo?x=1&y=%2Fz&y=2"),
        headers=headers,
        data=b'{"k": 1}',
        timeout=30,
    )
    seen = answer.json()
    # Assert
    assert answer.status_code == 200 and answer.headers["X-PyGrid-Node"] == node_id
    assert seen["method"] == method
    assert seen["path"] == "/a/b%20c/echo" and seen["query"] == "x=1&y=%2Fz&y=2"
    assert seen["bytes"] == 8
    sent = seen["headers"]
    assert sent["authorization"] == "Bearer node-token"
    assert sent["content-type"] == "application/json" and sent["accept"] == "application/json"
    assert sent["content-length"] == "8"
    assert sent["host"] == _stand_in_host(fake[1])
    for private in ("cookie", "x-forwarded-for", "x-custom"):
        assert private not in sent


@pytest.mark.slow
def test_only_the_documented_answer_headers_come_back(
    network: Server, fake: tuple[str, FakeNode]
) -> None:
    node_id, _ = fake
    answer = requests.get(routed(network, node_id, "/bytes?size=1000"), timeout=30)
    assert answer.status_code == 200 and len(answer.content) == 1000
    assert answer.headers["Content-Disposition"] == 'attachment; filename="blob.bin"'
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert answer.headers["Content-Length"] == "1000"
    assert "Set-Cookie" not in answer.headers and "X-Node-Internal" not in answer.headers


@pytest.mark.slow
@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_a_large_upload_streams_past_the_networks_limit(
    network: Server, fake: tuple[str, FakeNode], sized: bool
) -> None:
    # Prepare: 50 MiB, fifty times the Network's own limit, as one body or chunked
    node_id, _ = fake
    block = os.urandom(MIB)
    size = 50 * MIB
    body: Any = block * 50 if sized else (block for _ in range(50))
    worker = _network_worker(network)
    # Execute
    with _PeakRss(worker) as memory:
        answer = requests.post(
            routed(network, node_id, "/echo"),
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            timeout=120,
        )
    # Assert: every byte arrived, and the Network never held the body
    assert answer.status_code == 200, answer.text
    assert answer.json()["bytes"] == size
    assert answer.json()["sha256"] == hashlib.sha256(block * 50).hexdigest()
    assert memory.growth < 25 * MIB, memory.growth / MIB


@pytest.mark.slow
def test_the_nodes_own_limit_still_applies(network: Server, node: Server) -> None:
    # Prepare
    token = login(node.url, *NODE_OWNER.values())
    # Execute: more than the Node takes, less than a Network would ever check
    answer = requests.post(
        routed(network, "alice", "/data-centric/datasets"),
        data=b"x" * (NODE_LIMIT + MIB),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "multipart/form-data; boundary=x",
        },
        timeout=60,
    )
    # Assert: the Node's refusal, as the Node sent it
    assert answer.status_code == 413, answer.text
    assert answer.headers["X-PyGrid-Node"] == "alice" and answer.json()["error"]


@pytest.mark.slow
def test_a_large_download_streams_through(network: Server, fake: tuple[str, FakeNode]) -> None:
    node_id, _ = fake
    size = 64 * MIB + 7
    with requests.get(routed(network, node_id, f"/bytes?size={size}"), stream=True) as answer:
        received = sum(len(chunk) for chunk in answer.iter_content(MIB))
        assert answer.headers["Content-Length"] == str(size)
    assert received == size


@pytest.mark.slow
def test_an_unknown_or_removed_node_is_404(network: Server, fake: tuple[str, FakeNode]) -> None:
    # Prepare
    node_id, _ = fake
    owner = login(network.url, *NETWORK_OWNER.values())
    removed = requests.delete(
        f"{network.url}/registry/nodes/{node_id}",
        headers={"Authorization": f"Bearer {owner}"},
        timeout=30,
    )
    # Execute
    answers = [
        requests.get(routed(network, "nobody", "/status"), timeout=30),
        requests.post(routed(network, node_id, "/echo"), timeout=30),
    ]
    # Assert
    assert removed.status_code == 204
    for answer in answers:
        assert answer.status_code == 404
        assert answer.json()["detail"]["code"] == "unknown_node"


@pytest.mark.slow
def test_a_node_that_went_offline_is_502_node_offline(network: Server) -> None:
    # Prepare: a Node judged by a 0.2 s interval is offline after 2 s without heartbeats
    with FakeNode() as stand_in:
        node_id = f"fake-{uuid.uuid4().hex[:8]}"
        join(network.url, node_id, stand_in.url, heartbeat_seconds=0.2)
        _wait_for_status(network, node_id, "offline")
        # Execute
        answer = requests.get(routed(network, node_id, "/echo"), timeout=30)
    # Assert
    assert answer.status_code == 502
    assert answer.json()["detail"]["code"] == "node_offline"


@pytest.mark.slow
def test_a_killed_node_is_502_node_unreachable(network: Server, tmp_path: Path) -> None:
    # Prepare: a real Node, joined, then killed without a chance to leave
    with joined_node(tmp_path, network.url, "bob", env=NODE_OWNER) as server:
        alive = requests.get(routed(network, "bob", "/status"), timeout=30)
        kill(server.process)
        # Execute
        answer = requests.get(routed(network, "bob", "/status"), timeout=30)
    # Assert
    assert alive.status_code == 200 and alive.json()["id"] == "bob"
    assert answer.status_code == 502
    assert answer.json()["detail"] == {"code": "node_unreachable", "node_id": "bob"}


@pytest.mark.slow
def test_a_silent_node_is_504_and_others_are_served_meanwhile(
    network: Server, node: Server, fake: tuple[str, FakeNode]
) -> None:
    # Prepare
    node_id, stand_in = fake
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Execute: one request waits on a Node that never answers ...
        silent = pool.submit(
            requests.get, routed(network, node_id, "/hang-headers"), timeout=ROUTE_TIMEOUT * 10
        )
        assert stand_in.received.wait(30)
        # ... while others go to another Node and to the Network itself
        others = [requests.get(routed(network, "alice", "/status"), timeout=30) for _ in range(5)]
        others.append(requests.get(f"{network.url}/registry/nodes", timeout=30))
        answer = silent.result()
    stand_in.release.set()
    # Assert
    assert [o.status_code for o in others] == [200] * 6
    assert answer.status_code == 504
    assert answer.json()["detail"] == {"code": "node_timeout", "node_id": node_id}


@pytest.mark.slow
def test_a_node_that_stalls_mid_body_cuts_the_client_short(
    network: Server, fake: tuple[str, FakeNode]
) -> None:
    # Prepare
    node_id, stand_in = fake
    received = 0
    # Execute: the status and the first 256 KiB of 4 MiB arrive, then the Node says nothing
    answer = requests.get(
        routed(network, node_id, "/hang-body"), stream=True, timeout=ROUTE_TIMEOUT * 10
    )
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in answer.iter_content(64 * 1024):
            received += len(chunk)
    stand_in.release.set()
    # Assert: closed short by the Network (the client's own timeout is far longer)
    assert answer.status_code == 200
    assert answer.headers["Content-Length"] == str(4 * MIB)
    assert received == 256 * 1024
    after = requests.get(routed(network, node_id, "/echo"), timeout=30)
    assert after.status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/nodes/{id}/../registry/nodes", "/nodes/{id}/a/%2e%2e/echo"])
def test_dot_segments_cannot_leave_the_node(
    network: Server, fake: tuple[str, FakeNode], path: str
) -> None:
    node_id, _ = fake
    connection = http.client.HTTPConnection("127.0.0.1", int(network.url.rsplit(":", 1)[1]))
    try:
        connection.request("GET", path.format(id=node_id))
        answer = connection.getresponse()
        status = answer.status
        answer.read()
    finally:
        connection.close()
    assert status == 404


@pytest.mark.slow
def test_many_concurrent_routed_requests(network: Server, node: Server) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(
                lambda _: requests.get(routed(network, "alice", "/status"), timeout=30),
                range(64),
            )
        )
    assert [a.status_code for a in answers] == [200] * 64


# ---- in-process: the Network app and a stand-in Node ---------------------------------------


@pytest.fixture
def network_app(tmp_path: Path) -> Iterator[Any]:
    """A Network app whose routed requests give up after 0.5 s."""
    from pygrid.apps.network import create_app
    from pygrid.config import ServerSettings

    settings = ServerSettings(
        app="network",
        id="network",
        port=7000,
        data_dir=tmp_path / "data",
        owner_email=NETWORK_OWNER["PYGRID_OWNER_EMAIL"],
        owner_password=NETWORK_OWNER["PYGRID_OWNER_PASSWORD"],
        route_timeout=0.5,
        max_content_length=1024 * 1024,
    )
    app = create_app(settings)
    yield app
    app.extensions["pygrid.proxy"].close()
    app.extensions["pygrid.db"].engine.dispose()


@pytest.fixture
def in_process(network_app: Any) -> Iterator[tuple[Any, Any, str, FakeNode]]:
    """(app, test client, node id, stand-in) with the stand-in joined."""
    client = network_app.test_client()
    token = client.post(
        "/users/login",
        json=dict(zip(("email", "password"), NETWORK_OWNER.values(), strict=True)),
    ).get_json()["token"]
    owner = {"Authorization": f"Bearer {token}"}
    with FakeNode() as stand_in:
        for node_id, url in (("fake", stand_in.url), ("down", f"http://127.0.0.1:{free_port()}")):
            join_token = client.post("/registry/join-tokens", json={}, headers=owner).get_json()
            joined = client.post(
                "/registry/join",
                json={"join_token": join_token["token"], "node_id": node_id, "url": url},
            )
            assert joined.status_code == 201, joined.get_json()
        yield network_app, client, "fake", stand_in


def test_in_process_a_body_over_the_networks_limit_is_routed(
    in_process: tuple[Any, Any, str, FakeNode],
) -> None:
    # Prepare: 3 MiB against the Network's 1 MiB limit
    _, client, node_id, _ = in_process
    body = os.urandom(3 * MIB)
    # Execute
    answer = client.post(
        f"/nodes/{node_id}/upload/echo?a=1",
        data=body,
        headers={"Authorization": "Bearer t", "Cookie": "c=1"},
        content_type="application/octet-stream",
    )
    refused = client.post("/users/login", data=body, content_type="application/json")
    # Assert
    seen = answer.get_json()
    assert answer.status_code == 200 and answer.headers["X-PyGrid-Node"] == node_id
    assert seen["bytes"] == len(body) and seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["path"] == "/upload/echo" and seen["query"] == "a=1"
    assert seen["headers"]["authorization"] == "Bearer t" and "cookie" not in seen["headers"]
    assert refused.status_code == 413


@pytest.mark.parametrize(
    ("node_id", "path", "status", "code"),
    [
        ("down", "/status", 502, "node_unreachable"),
        ("fake", "/hang-headers", 504, "node_timeout"),
        ("nobody", "/status", 404, "unknown_node"),
        ("fake", "/a/%2e%2e/%2e%2e/registry/nodes", 404, "bad_routed_path"),
    ],
)
def test_in_process_routing_failures_are_json(
    in_process: tuple[Any, Any, str, FakeNode], node_id: str, path: str, status: int, code: str
) -> None:
    _, client, _, stand_in = in_process
    answer = client.get(f"/nodes/{node_id}{path}")
    stand_in.release.set()
    assert answer.status_code == status
    assert set(answer.get_json()) == {"error", "detail"}
    assert answer.get_json()["detail"]["code"] == code


def test_in_process_head_gets_the_nodes_headers_and_no_body(
    in_process: tuple[Any, Any, str, FakeNode],
) -> None:
    _, client, node_id, _ = in_process
    for _ in range(2):  # the pooled connection to the Node stays usable
        answer = client.head(f"/nodes/{node_id}/bytes?size=1000")
        assert answer.status_code == 200 and answer.data == b""
        assert answer.headers["Content-Length"] == "1000"
        assert answer.headers["Content-Disposition"] == 'attachment; filename="blob.bin"'


def test_in_process_a_node_stalling_mid_body_aborts_the_answer(
    in_process: tuple[Any, Any, str, FakeNode],
) -> None:
    from pygrid.network.proxy import NodeStoppedMidBody

    _, client, node_id, stand_in = in_process
    answer = client.get(f"/nodes/{node_id}/hang-body", buffered=False)
    received = 0
    with pytest.raises(NodeStoppedMidBody):
        for chunk in answer.response:
            received += len(chunk)
    answer.close()
    stand_in.release.set()
    assert answer.status_code == 200 and received == 256 * 1024


# ---- helpers ----------------------------------------------------------------------------------


def _stand_in_host(stand_in: FakeNode) -> str:
    return stand_in.url.removeprefix("http://")


def _network_worker(network: Server) -> psutil.Process:
    """The Network's one gunicorn worker (the launcher's child)."""
    children = psutil.Process(network.process.pid).children(recursive=True)
    assert len(children) == 1, children
    return children[0]


class _PeakRss:
    """The most a process's resident size grew over a block, sampled every few milliseconds."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.start = process.memory_info().rss
        self.peak = self.start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


def _wait_for_status(network: Server, node_id: str, wanted: str) -> None:
    for _ in range(300):
        nodes = requests.get(f"{network.url}/registry/nodes", timeout=30).json()["nodes"]
        if any(n["id"] == node_id and n["status"] == wanted for n in nodes):
            return
        time.sleep(0.05)
    raise AssertionError(f"{node_id} never became {wanted}")
