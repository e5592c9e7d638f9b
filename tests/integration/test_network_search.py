"""Search across Nodes as a data scientist meets it: from the catalogues Nodes published, and
live, with real HTTP to tiny Nodes on 127.0.0.1 (one of which never answers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import update
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from pygrid.db.models import GridNode, utcnow
from tests.support.users import PASSWORD, bearer


def local(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request to 127.0.0.1, never through a proxy from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, timeout=60, **kwargs)


def dataset(id_: int, name: str, tags: list[str], description: str = "") -> dict[str, Any]:
    return {
        "id": id_,
        "name": name,
        "description": description,
        "tags": tags,
        "rows": 100,
        "columns": [{"name": "x", "dtype": "float32", "shape": [4]}],
        "mock_url": f"/data-centric/datasets/{id_}/mock",
    }


CATALOGUES: dict[str, dict[str, Any]] = {
    "alice": {
        "datasets": [
            dataset(1, "digits", ["digits", "images"], "Handwritten digits"),
            dataset(2, "census", ["tabular"], "People by city"),
        ],
        "processes": [{"name": "mnist", "version": "1.0", "state": "running", "cycles_done": 3}],
        "load": {"queued_jobs": 0},
    },
    "bob": {
        "datasets": [dataset(7, "mnist-digits", ["digits"], "More digits")],
        "processes": [
            {"name": "mnist", "version": "2.0", "state": "running", "cycles_done": 0},
            {"name": "census-model", "version": "1.0", "state": "done", "cycles_done": 9},
        ],
        "load": {},
    },
}


@pytest.fixture
def app_kind() -> str:
    """Search exists on the Network only."""
    return "network"


@pytest.fixture
def join(client: Any, owner_token: str) -> Callable[[str, dict[str, Any], str], str]:
    """Join a Node (id, catalogue, url) with a fresh join token; its credential."""

    def make(node_id: str, catalogue: dict[str, Any], url: str = "http://127.0.0.1:1") -> str:
        token = client.post("/registry/join-tokens", json={}, headers=bearer(owner_token))
        body = {
            "join_token": token.get_json()["token"],
            "node_id": node_id,
            "url": url,
            "heartbeat_seconds": 10,
            "catalogue": catalogue,
        }
        response = client.post("/registry/join", json=body)
        assert response.status_code == 201, response.get_json()
        credential: str = response.get_json()["credential"]
        return credential

    return make


def hits(body: dict[str, Any], key: str = "dataset") -> list[tuple[str, Any]]:
    return [
        (hit["node_id"], hit[key].get("id", hit[key].get("version"))) for hit in body["results"]
    ]


def _last_seen(app: Any, node_id: str, seconds_ago: float) -> None:
    with Session(app.extensions["pygrid.db"].engine) as session:
        session.execute(
            update(GridNode)
            .where(GridNode.id == node_id)
            .values(last_seen=utcnow() - timedelta(seconds=seconds_ago))
        )
        session.commit()


# ---- cached -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [("alice", 1), ("alice", 2), ("bob", 7)]),
        ("?tags=digits", [("alice", 1), ("bob", 7)]),
        ("?tags=digits,images", [("alice", 1)]),
        ("?tags=DIGITS,%20images%20,", [("alice", 1)]),
        ("?q=CITY", [("alice", 2)]),
        ("?q=digits&tags=digits", [("alice", 1), ("bob", 7)]),
        ("?tags=audio", []),
    ],
)
def test_search_answers_from_the_published_catalogues(
    client: Any, join: Any, query: str, expected: list[tuple[str, int]]
) -> None:
    for node_id, catalogue in CATALOGUES.items():
        join(node_id, catalogue)
    response = client.get(f"/search{query}")
    assert response.status_code == 200
    body = response.get_json()
    assert hits(body) == expected
    assert body["nodes_searched"] == 2 and body["unanswered"] == []
    first = body["results"][0] if body["results"] else None
    if first:
        assert first["node_url"] == "http://127.0.0.1:1" and first["node_status"] == "online"
        assert first["dataset"] == next(
            d for d in CATALOGUES[first["node_id"]]["datasets"] if d["id"] == first["dataset"]["id"]
        )


def test_cached_search_includes_stale_nodes_and_leaves_out_offline_and_removed(
    app: Any, client: Any, owner_token: str, join: Any
) -> None:
    # Prepare
    for node_id in ("fresh", "tired", "down", "gone"):
        join(node_id, CATALOGUES["bob"])
    _last_seen(app, "tired", 60)
    _last_seen(app, "down", 200)
    client.delete("/registry/nodes/gone", headers=bearer(owner_token))
    # Execute
    body = client.get("/search?tags=digits").get_json()
    models = client.get("/search-model?name=mnist").get_json()
    # Assert
    assert [(h["node_id"], h["node_status"]) for h in body["results"]] == [
        ("fresh", "online"),
        ("tired", "stale"),
    ]
    assert body["nodes_searched"] == 2
    assert [h["node_id"] for h in models["results"]] == ["fresh", "tired"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?name=mnist", [("alice", "1.0"), ("bob", "2.0")]),
        ("?name=mnist&version=2.0", [("bob", "2.0")]),
        ("?name=census-model", [("bob", "1.0")]),
        ("?name=MNIST", []),
        ("?name=mnist&version=3", []),
    ],
)
def test_search_model_finds_processes_by_name_and_version(
    client: Any, join: Any, query: str, expected: list[tuple[str, str]]
) -> None:
    for node_id, catalogue in CATALOGUES.items():
        join(node_id, catalogue)
    response = client.get(f"/search-model{query}")
    assert response.status_code == 200
    assert hits(response.get_json(), "process") == expected


@pytest.mark.parametrize(
    "query",
    [
        "/search?live=maybe",
        "/search?timeout=0",
        "/search?timeout=0.05",
        "/search?timeout=99",
        "/search?timeout=soon",
        "/search?timeout=nan",
        "/search?tags=" + ",".join(f"t{i}" for i in range(21)),
        "/search?tags=" + "x" * 51,
        "/search?tags=no%20spaces",
        "/search?q=" + "q" * 201,
        "/search?tags=a&tags=b",
        "/search?colour=red",
        "/search-model",
        "/search-model?name=",
        "/search-model?name=mnist&live=perhaps",
        "/search-model?name=mnist&timeout=31",
        "/search-model?name=mnist&tags=x",
        "/search-model?name=" + "n" * 101,
    ],
)
def test_malformed_search_parameters_get_422(client: Any, query: str) -> None:
    response = client.get(query)
    assert response.status_code == 422, response.get_json()
    assert set(response.get_json()) == {"error", "detail"}


def test_twenty_tags_of_50_characters_are_fine(client: Any) -> None:
    # the Nodes' own rule, so that a live search never forwards a tag they refuse
    tags = ",".join(f"{i:02d}" + "t" * 48 for i in range(20))
    assert client.get(f"/search?tags={tags}").status_code == 200


# ---- live, over real HTTP ---------------------------------------------------------------------


class FakeNode:
    """A Node that answers ``GET /catalogue`` from a thread on 127.0.0.1, or hangs until
    released; it records the queries it was asked."""

    def __init__(self, node_id: str, catalogue: dict[str, Any], hang: bool = False) -> None:
        self.node_id = node_id
        self.catalogue = {**catalogue, "node_id": node_id}
        self.hang = hang
        self.asked = threading.Event()
        self.release = threading.Event()
        self.queries: list[dict[str, list[str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                parts = urlsplit(self.path)
                fake.queries.append(parse_qs(parts.query))
                fake.asked.set()
                if fake.hang:
                    fake.release.wait(timeout=30)
                body = json.dumps(fake.catalogue).encode()
                self.send_response(200 if parts.path == "/catalogue" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeNode:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` behind a real threaded HTTP server on 127.0.0.1; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def live_network(tmp_path: Path) -> Iterator[tuple[str, requests.Session]]:
    """A Network on SQLite served over real HTTP, and an HTTP session logged in as its Owner."""
    from pygrid.apps.network import create_app
    from pygrid.config import ServerSettings

    settings = ServerSettings(
        app="network",
        id="net",
        port=7000,
        data_dir=tmp_path / "net",
        owner_email="owner@example.org",
        owner_password=PASSWORD,
    )
    app = create_app(settings)
    http = requests.Session()
    http.trust_env = False  # nothing here may go through a proxy
    try:
        with serving(app) as url:
            login = http.post(
                f"{url}/users/login", json={"email": "owner@example.org", "password": PASSWORD}
            )
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            yield url, http
    finally:
        http.close()
        app.extensions["pygrid.fanout"].close()
        app.extensions["pygrid.db"].engine.dispose()


def join_over_http(http: requests.Session, network: str, node: FakeNode) -> None:
    token = http.post(f"{network}/registry/join-tokens", json={}, timeout=30).json()["token"]
    body = {
        "join_token": token,
        "node_id": node.node_id,
        "url": node.url,
        "heartbeat_seconds": 10,
        "catalogue": node.catalogue,
    }
    joined = local("POST", f"{network}/registry/join", json=body)
    assert joined.status_code == 201, joined.text
    beat = local(
        "POST",
        f"{network}/registry/heartbeat",
        json={"node_id": node.node_id, "url": node.url, "catalogue": node.catalogue},
        headers=bearer(joined.json()["credential"]),
    )
    assert beat.status_code == 200, beat.text


@pytest.fixture
def grid(live_network: tuple[str, requests.Session]) -> Iterator[tuple[str, dict[str, FakeNode]]]:
    """A Network with alice and bob (who answer) and sloth (who hangs), joined over HTTP."""
    network, http = live_network
    with ExitStack() as stack:
        nodes = {
            "alice": stack.enter_context(FakeNode("alice", CATALOGUES["alice"])),
            "bob": stack.enter_context(FakeNode("bob", CATALOGUES["bob"])),
            "sloth": stack.enter_context(FakeNode("sloth", CATALOGUES["bob"], hang=True)),
        }
        for node in nodes.values():
            join_over_http(http, network, node)
        yield network, nodes


def test_live_search_lists_a_hanging_node_as_unanswered(
    grid: tuple[str, dict[str, FakeNode]],
) -> None:
    network, nodes = grid
    # Execute
    response = local("GET", f"{network}/search?tags=digits&q=dig&live=true&timeout=1")
    # Assert
    body = response.json()
    assert response.status_code == 200, body
    assert hits(body) == [("alice", 1), ("bob", 7)]
    assert body["nodes_searched"] == 3
    assert body["unanswered"] == [{"node_id": "sloth", "reason": "no answer within 1 s"}]
    assert nodes["alice"].queries == [{"tags": ["digits"], "q": ["dig"]}]


def test_live_search_does_not_hold_up_other_requests(
    grid: tuple[str, dict[str, FakeNode]],
) -> None:
    network, nodes = grid
    outcome: dict[str, Any] = {}

    def search() -> None:
        outcome["response"] = local(
            "GET", f"{network}/search-model?name=mnist&live=true&timeout=30"
        )

    searcher = threading.Thread(target=search)
    # Execute: while sloth holds the live search, the registry still answers
    searcher.start()
    assert nodes["sloth"].asked.wait(timeout=30)
    listed = local("GET", f"{network}/registry/nodes")
    in_flight = searcher.is_alive()  # sloth has not been released: the search cannot be done
    nodes["sloth"].release.set()
    searcher.join(timeout=60)
    # Assert
    assert listed.status_code == 200
    assert sorted(n["id"] for n in listed.json()["nodes"]) == ["alice", "bob", "sloth"]
    assert in_flight
    body = outcome["response"].json()
    assert hits(body, "process") == [("alice", "1.0"), ("bob", "2.0"), ("sloth", "2.0")]
    assert body["unanswered"] == []
    assert nodes["alice"].queries == [{}]


def test_live_search_reports_nodes_that_answer_wrongly(
    live_network: tuple[str, requests.Session], tmp_path: Path
) -> None:
    network, http = live_network
    with ExitStack() as stack:
        liar = stack.enter_context(FakeNode("liar", CATALOGUES["alice"]))
        broken = stack.enter_context(FakeNode("broken", CATALOGUES["alice"]))
        for node in (liar, broken):
            join_over_http(http, network, node)
        liar.catalogue["node_id"] = "alice"  # answers as somebody else
        broken.catalogue = {"datasets": "lots"}
        # a Node whose server is gone
        gone = FakeNode("gone", CATALOGUES["bob"])
        join_over_http(http, network, gone)
        gone.server.server_close()

        body = local("GET", f"{network}/search?live=true&timeout=5").json()

    assert body["results"] == [] and body["nodes_searched"] == 3
    reasons = {entry["node_id"]: entry["reason"] for entry in body["unanswered"]}
    assert reasons["liar"] == "answered something that is not its catalogue"
    assert reasons["broken"] == "answered something that is not its catalogue"
    assert reasons["gone"].startswith("unreachable")
