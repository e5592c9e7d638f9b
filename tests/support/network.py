"""A real Network on 127.0.0.1, Nodes joined to it, and a stand-in Node that misbehaves on cue."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from tests.support.servers import Server, free_port, running, wait_for

NETWORK_OWNER = {
    "PYGRID_OWNER_EMAIL": "network@example.org",
    "PYGRID_OWNER_PASSWORD": "network-password-1",
}


@contextmanager
def network_server(
    tmp: Path, route_timeout: float = 60, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A real ``pygrid network`` with ``route_timeout``; stopped by PID on exit."""
    port = free_port()
    args = ["network", "--port", str(port), "--data-dir", str(tmp / "network-data")]
    args += ["--route-timeout", f"{route_timeout:g}"]
    with running(args, port, tmp / "network.log", env={**NETWORK_OWNER, **(env or {})}) as server:
        yield server


def login(url: str, email: str, password: str) -> str:
    """A user token from ``POST /users/login``."""
    answer = requests.post(
        f"{url}/users/login", json={"email": email, "password": password}, timeout=30
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def join_token(network_url: str, uses: int = 1) -> str:
    """A join token made by the Network's Owner."""
    owner = login(network_url, *NETWORK_OWNER.values())
    answer = requests.post(
        f"{network_url}/registry/join-tokens",
        json={"uses": uses},
        headers={"Authorization": f"Bearer {owner}"},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


@contextmanager
def joined_node(
    tmp: Path, network_url: str, node_id: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A real ``pygrid node --network URL`` that joined with a fresh join token (NETWORK_TOKEN)
    and is online in the Network's registry; stopped by PID on exit."""
    port = free_port()
    args = ["node", "--id", node_id, "--port", str(port), "--data-dir", str(tmp / node_id)]
    args += ["--network", network_url]
    env = {**(env or {}), "NETWORK_TOKEN": join_token(network_url)}
    with running(args, port, tmp / f"{node_id}.log", env=env) as server:
        wait_for(f"{node_id} online in the Network", lambda: _online(network_url, node_id))
        yield server


def _online(network_url: str, node_id: str) -> bool:
    nodes = requests.get(f"{network_url}/registry/nodes", timeout=30).json()["nodes"]
    return any(n["id"] == node_id and n["status"] == "online" for n in nodes)


def join(
    network_url: str, node_id: str, node_url: str, heartbeat_seconds: float = 3600
) -> dict[str, Any]:
    """Register ``node_url`` as ``node_id`` the way a Node joins (a long interval keeps it
    online without heartbeats)."""
    answer = requests.post(
        f"{network_url}/registry/join",
        json={
            "join_token": join_token(network_url),
            "node_id": node_id,
            "url": node_url,
            "heartbeat_seconds": heartbeat_seconds,
        },
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The Network hangs up on a stalled answer: that is the point, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeNode:
    """An HTTP server standing in for a Node, answering by path:

    ``/echo`` what it received (method, path, query, headers, body size and sha256);
    ``/bytes?size=N`` N bytes with a Content-Disposition; ``/hang-headers`` nothing until
    released; ``/hang-body`` headers and part of the body, then nothing until released.
    ``received`` is set when a hanging path has been reached.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                fake.handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        self.server = _Server(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeNode:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop answering: release hanging requests, close the listening socket."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def handle(self, http: BaseHTTPRequestHandler) -> None:
        """Answer one request as its path says."""
        parts = urlsplit(http.path)
        digest = hashlib.sha256()
        size = 0
        for chunk in _body(http):
            digest.update(chunk)
            size += len(chunk)
        if parts.path.endswith("/hang-headers"):
            self.received.set()
            self.release.wait(60)
            self._send(http, 200, b"late", "text/plain")
        elif parts.path.endswith("/hang-body"):
            http.send_response(200)
            http.send_header("Content-Type", "application/octet-stream")
            http.send_header("Content-Length", str(4 << 20))
            http.end_headers()
            http.wfile.write(b"x" * (256 << 10))
            http.wfile.flush()
            self.received.set()
            self.release.wait(60)
            http.close_connection = True
        elif parts.path.endswith("/bytes"):
            count = int(parse_qs(parts.query)["size"][0])
            http.send_response(200)
            http.send_header("Content-Type", "application/octet-stream")
            http.send_header("Content-Length", str(count))
            http.send_header("Content-Disposition", 'attachment; filename="blob.bin"')
            http.send_header("Set-Cookie", "node-session=secret")
            http.send_header("X-Node-Internal", "1")
            http.end_headers()
            block = bytes(range(256)) * 4096
            sent = count if http.command == "HEAD" else 0
            while sent < count:
                piece = block[: min(len(block), count - sent)]
                http.wfile.write(piece)
                sent += len(piece)
        else:
            answer = {
                "method": http.command,
                "path": parts.path,
                "query": parts.query,
                "headers": {k.lower(): v for k, v in http.headers.items()},
                "bytes": size,
                "sha256": digest.hexdigest(),
            }
            self._send(http, 200, json.dumps(answer).encode(), "application/json")

    @staticmethod
    def _send(http: BaseHTTPRequestHandler, status: int, body: bytes, mimetype: str) -> None:
        http.send_response(status)
        http.send_header("Content-Type", mimetype)
        http.send_header("Content-Length", str(len(body)))
        http.end_headers()
        if http.command != "HEAD":
            http.wfile.write(body)


def _body(http: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """The request body in pieces, sized by Content-Length or sent chunked."""
    if "chunked" in http.headers.get("Transfer-Encoding", "").lower():
        while size := int(http.rfile.readline().split(b";")[0].strip(), 16):
            yield http.rfile.read(size)
            http.rfile.readline()
        while http.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return
    left = int(http.headers.get("Content-Length") or 0)
    while left > 0:
        chunk = http.rfile.read(min(1 << 20, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk
