"""Search latency of a real ``pygrid network`` with 50 Nodes: cached ``/search`` and live
``/search?live=true&timeout=1`` with 5 of the 50 Nodes hanging.

The Nodes are in-process fakes: one ``ThreadingHTTPServer`` each on 127.0.0.1 that answers
``GET /catalogue`` with 3 datasets (the hanging ones never answer until the run ends). Each
joins with a real join token over HTTP and heartbeats every few seconds for the whole run, so
the Network writes while it is read.

Baseline, measured in the same run on the same server: ``GET /status`` (no database work).
Cached search is reported as a ratio to it. Live search is bounded by its timeout (the five
hanging Nodes), so its latency is reported against the 1 s timeout; a cached search issued
while live searches are in flight shows that they hold nothing else up.

    .venv/bin/python bench/network_search.py [--requests 300] [--live-requests 24]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import (  # noqa: E402
    OWNER_EMAIL,
    OWNER_PASSWORD,
    free_port,
    log,
    percentile,
    rounded,
    stop,
)

NODES = 50
HANGING = 5
HEARTBEAT_SECONDS = 5.0
LIVE_TIMEOUT = 1.0
TAGS = ("digits", "images", "tabular", "census", "audio", "text", "medical", "finance")
QUERIES = ("tags=digits", "tags=census,tabular", "q=node-1", "tags=audio&q=set", "")


def catalogue(index: int) -> dict[str, Any]:
    """Three datasets with tags that vary across Nodes, one FL process."""
    return {
        "node_id": f"node-{index:02d}",
        "datasets": [
            {
                "id": k,
                "name": f"node-{index:02d}-set-{k}",
                "description": f"dataset {k} of node {index}",
                "tags": [TAGS[(index + k) % len(TAGS)], TAGS[(index * 3 + k) % len(TAGS)]],
                "rows": 1000 * (k + 1),
                "columns": [{"name": "x", "dtype": "float32", "shape": [16]}],
                "mock_url": f"/data-centric/datasets/{k}/mock",
            }
            for k in range(1, 4)
        ],
        "processes": [{"name": "mnist", "version": "1.0", "state": "running", "cycles_done": 1}],
        "load": {"queued_jobs": 0, "running_jobs": 0, "workers_seen": 1},
    }


class FakeNode:
    """``GET /catalogue`` on 127.0.0.1 from a thread; a hanging one answers only when released."""

    def __init__(self, index: int, hang: bool, release: threading.Event) -> None:
        self.node_id = f"node-{index:02d}"
        self.catalogue = catalogue(index)
        body = json.dumps(self.catalogue).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if hang:
                    release.wait(timeout=10)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the Network gave up on us already

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
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def network() -> Iterator[str]:
    """``pygrid network`` on a free port with a temp data dir; stopped by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="pygrid-bench-") as tmp:
        port = free_port()
        log_path = Path(tmp) / "network.log"
        env = {
            **os.environ,
            "PYGRID_OWNER_EMAIL": OWNER_EMAIL,
            "PYGRID_OWNER_PASSWORD": OWNER_PASSWORD,
        }
        for name in ("DATABASE_URL", "PYGRID_BLOB_URL", "PYGRID_DATA_DIR", "SECRET_KEY"):
            env.pop(name, None)
        command = [sys.executable, "-m", "pygrid.cli", "network", "--port", str(port)]
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--data-dir", str(Path(tmp) / "data")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        probe = requests.Session()
        probe.trust_env = False  # only 127.0.0.1, never through a proxy from the environment
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"network exited:\n{log_path.read_text()[-3000:]}")
                try:
                    if probe.get(f"{url}/status", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"network did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield url
        finally:
            probe.close()
            stop(process)


def timed(http: requests.Session, url: str) -> tuple[float, Any]:
    """Seconds to the last byte of a GET, and its JSON; raises on a non-200."""
    started = time.perf_counter()
    response = http.get(url, timeout=30)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "p50_ms": rounded(1000 * percentile(latencies, 0.5), 2),
        "p95_ms": rounded(1000 * percentile(latencies, 0.95), 2),
    }


class Heartbeats:
    """Every Node heartbeats each interval over HTTP for the whole run (errors counted)."""

    def __init__(self, url: str, nodes: list[FakeNode], credentials: dict[str, str]) -> None:
        self.url, self.nodes, self.credentials = url, nodes, credentials
        self.sent = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as http:
            http.trust_env = False
            while not self._stop.wait(HEARTBEAT_SECONDS / 2):
                for node in self.nodes:
                    answer = http.post(
                        f"{self.url}/registry/heartbeat",
                        json={
                            "node_id": node.node_id,
                            "url": node.url,
                            "catalogue": node.catalogue,
                        },
                        headers={"Authorization": f"Bearer {self.credentials[node.node_id]}"},
                        timeout=10,
                    )
                    self.sent += 1
                    self.errors += answer.status_code != 200

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--live-requests", type=int, default=24)
    parser.add_argument("--live-concurrency", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    release = threading.Event()
    with ExitStack() as stack:
        url = stack.enter_context(network())
        log(f"network up at {url}")
        http = stack.enter_context(requests.Session())
        http.trust_env = False
        login = http.post(
            f"{url}/users/login",
            json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD},
            timeout=30,
        )
        owner = {"Authorization": f"Bearer {login.json()['token']}"}
        token = http.post(
            f"{url}/registry/join-tokens", json={"uses": NODES}, headers=owner, timeout=30
        ).json()["token"]
        # hanging Nodes are spread over the id range, not bunched at the end
        hanging = {i * (NODES // HANGING) for i in range(HANGING)}
        nodes = [stack.enter_context(FakeNode(i, i in hanging, release)) for i in range(NODES)]
        stack.callback(release.set)  # runs before the fake servers stop
        credentials = {}
        for node in nodes:
            joined = http.post(
                f"{url}/registry/join",
                json={
                    "join_token": token,
                    "node_id": node.node_id,
                    "url": node.url,
                    "heartbeat_seconds": HEARTBEAT_SECONDS,
                    "catalogue": node.catalogue,
                },
                timeout=30,
            )
            joined.raise_for_status()
            credentials[node.node_id] = joined.json()["credential"]
        beats = stack.enter_context(Heartbeats(url, nodes, credentials))
        log(f"{NODES} Nodes joined ({len(hanging)} hang on /catalogue)")

        for _ in range(20):  # warm up connections and the server's threads
            timed(http, f"{url}/status")
            timed(http, f"{url}/search?tags=digits")

        status = [timed(http, f"{url}/status")[0] for _ in range(args.requests)]
        cached: list[float] = []
        cached_hits = 0
        for i in range(args.requests):
            elapsed, body = timed(http, f"{url}/search?{QUERIES[i % len(QUERIES)]}")
            cached.append(elapsed)
            cached_hits += len(body["results"])
            assert body["nodes_searched"] == NODES, body["nodes_searched"]
        log(f"cached: {summary(cached)}; status: {summary(status)}")

        expected_unanswered = sorted(nodes[i].node_id for i in hanging)
        live_ok = 0
        during_live: list[float] = []
        live_done = threading.Event()

        def live_search(i: int) -> float:
            with requests.Session() as session:
                session.trust_env = False
                query = QUERIES[i % len(QUERIES)]
                elapsed, body = timed(
                    session, f"{url}/search?{query}&live=true&timeout={LIVE_TIMEOUT:g}"
                )
            unanswered = sorted(u["node_id"] for u in body["unanswered"])
            return elapsed if unanswered == expected_unanswered else -elapsed

        def cached_meanwhile() -> None:
            with requests.Session() as session:
                session.trust_env = False
                while not live_done.is_set():
                    during_live.append(timed(session, f"{url}/search?tags=digits")[0])
                    time.sleep(0.02)

        side = threading.Thread(target=cached_meanwhile, daemon=True)
        side.start()
        with ThreadPoolExecutor(args.live_concurrency) as pool:
            outcomes = list(pool.map(live_search, range(args.live_requests)))
        live_done.set()
        side.join(timeout=30)
        live = [abs(o) for o in outcomes]
        live_ok = sum(o > 0 for o in outcomes)
        log(f"live: {summary(live)}; cached meanwhile: {summary(during_live)}")

    base = summary(status)
    cached_summary = summary(cached)
    live_summary = summary(live)
    meanwhile = summary(during_live)
    print(
        json.dumps(
            {
                "bench": "network_search",
                "nodes": NODES,
                "hanging_nodes": HANGING,
                "datasets_per_node": 3,
                "baseline_status": base,
                "search_cached": {
                    **cached_summary,
                    "hits_per_request": rounded(cached_hits / max(1, len(cached)), 1),
                    "ratio_p50": rounded(cached_summary["p50_ms"] / base["p50_ms"], 2),
                    "ratio_p95": rounded(cached_summary["p95_ms"] / base["p95_ms"], 2),
                },
                "search_live": {
                    **live_summary,
                    "timeout_s": LIVE_TIMEOUT,
                    "concurrency": args.live_concurrency,
                    "hanging_reported_unanswered": f"{live_ok}/{len(live)}",
                    "ratio_p50": rounded(live_summary["p50_ms"] / base["p50_ms"], 1),
                    "ratio_p95": rounded(live_summary["p95_ms"] / base["p95_ms"], 1),
                    "p95_over_timeout": rounded(live_summary["p95_ms"] / 1000 / LIVE_TIMEOUT, 3),
                },
                "search_cached_during_live": {
                    **meanwhile,
                    "ratio_p50": rounded(meanwhile["p50_ms"] / base["p50_ms"], 2),
                },
                "heartbeats": {"sent": beats.sent, "errors": beats.errors},
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
