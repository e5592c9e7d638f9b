"""What routing through a Network costs a large download: ``get-model`` of a hosted model with
10M float32 parameters (~40 MB) fetched directly from the Node and through the Network's
``/nodes/<id>/...`` route, in the same run.

Real processes on 127.0.0.1: a ``pygrid network`` and a ``pygrid node --network URL`` that joins
it with a join token (NETWORK_TOKEN). A device authenticates and is accepted into a cycle once;
its request key then opens the checkpoint for every fetch. Fetches alternate (direct, routed,
direct, ...) so that load from others on a shared machine hits both alike. Each fetch streams
the body in 1 MiB chunks and discards it, as a device writing to disk would.

Reported: MB/s (10^6 bytes) of each path (total bytes / total seconds), the ratio routed/direct,
the median seconds per fetch, and the Network's RSS (gunicorn master and worker) before and at
its peak while routing: a proxy that buffered the model would add ~40 MB per fetch there.

Prints one JSON line. Run: ``.venv/bin/python bench/routing_throughput.py [--fetches 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _grid import (  # noqa: E402  (the benches' shared helpers live beside them)
    MIB,
    OWNER_EMAIL,
    OWNER_PASSWORD,
    RssSampler,
    free_port,
    log,
    node,
    owner_client,
    stop,
)

NODE_ID = "bench-node"


@dataclass
class Network:
    """A running ``pygrid network``."""

    url: str
    pid: int


@contextmanager
def network() -> Iterator[Network]:
    """A ``pygrid network`` on a free port with a temp data dir; stopped by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="pygrid-bench-network-") as tmp:
        port = free_port()
        log_path = Path(tmp) / "network.log"
        command = [sys.executable, "-m", "pygrid.cli", "network", "--port", str(port)]
        command += ["--data-dir", str(Path(tmp) / "data")]
        environment = {
            **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY"}},
            "PYGRID_OWNER_EMAIL": OWNER_EMAIL,
            "PYGRID_OWNER_PASSWORD": OWNER_PASSWORD,
        }
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until(f"the Network at {url}", lambda: _answers(f"{url}/status"), process)
            yield Network(url, process.pid)
        finally:
            stop(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _wait_until(what: str, check: Any, process: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def join_token(network_url: str) -> str:
    """A one-use join token made by the Network's Owner."""
    login = requests.post(
        f"{network_url}/users/login",
        json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD},
        timeout=30,
    )
    login.raise_for_status()
    answer = requests.post(
        f"{network_url}/registry/join-tokens",
        json={"name": "bench"},
        headers={"Authorization": f"Bearer {login.json()['token']}"},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def host_and_enter_a_cycle(node_url: str) -> dict[str, Any]:
    """Host the 10M-parameter model; a device's worker_id, request_key and model_id for it."""
    import torch

    from pygrid.client import FLClient

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 9990))  # 9,999,990 parameters
    owner = owner_client(node_url)
    config = {"name": "routing-bench", "version": "1", "batch_size": 1, "lr": 0.1, "max_updates": 1}
    owner.host_federated_training(model, config, {"max_workers": 1})
    job = FLClient(node_url).new_job("routing-bench", "1")
    worker_id = job.authenticate()
    answer = job.client.http.json(
        "POST",
        "/model-centric/cycle-request",
        json={"worker_id": worker_id, "model": "routing-bench"},
    )
    if answer["status"] != "accepted":
        raise RuntimeError(f"the device was not accepted: {answer}")
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "worker_id": worker_id,
        "request_key": answer["request_key"],
        "model_id": answer["model_id"],
        "parameters": parameters,
    }


def fetch(session: requests.Session, url: str, params: dict[str, Any]) -> tuple[int, float]:
    """Bytes and seconds of one streamed download, body discarded."""
    started = time.perf_counter()
    received = 0
    with session.get(url, params=params, stream=True, timeout=120) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(MIB):
            received += len(chunk)
    return received, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=10, help="Downloads per path.")
    args = parser.parse_args()
    started = time.perf_counter()
    with network() as grid_network:
        network_url = grid_network.url
        env = {"NETWORK_TOKEN": join_token(network_url)}
        with node(
            "--id", NODE_ID, "--network", network_url, env=env, max_content_length=256 * MIB
        ) as grid_node:
            log("waiting for the Node to join the Network")
            _wait_until(
                "the Node to join",
                lambda: any(
                    n["id"] == NODE_ID and n["status"] == "online"
                    for n in requests.get(f"{network_url}/registry/nodes", timeout=10).json()[
                        "nodes"
                    ]
                ),
                None,
            )
            log("hosting a model with 10M float32 parameters")
            cycle = host_and_enter_a_cycle(grid_node.url)
            params = {k: cycle[k] for k in ("worker_id", "request_key", "model_id")}
            urls = {
                "direct": f"{grid_node.url}/model-centric/get-model",
                "routed": f"{network_url}/nodes/{NODE_ID}/model-centric/get-model",
            }
            session = requests.Session()
            session.trust_env = False
            for url in urls.values():  # warm-up: connections, page cache, the Node's blob
                fetch(session, url, params)
            seconds: dict[str, list[float]] = {"direct": [], "routed": []}
            size = 0
            log(f"fetching {args.fetches} times per path, alternating")
            with RssSampler(grid_network.pid) as network_rss:
                rss_before = network_rss.sample() / MIB
                for _ in range(args.fetches):
                    for path, url in urls.items():
                        size, elapsed = fetch(session, url, params)
                        seconds[path].append(elapsed)
            session.close()
    mb_per_s = {path: size * len(s) / sum(s) / 1e6 for path, s in seconds.items()}
    result = {
        "bench": "routing_throughput",
        "parameters": cycle["parameters"],
        "model_bytes": size,
        "fetches_per_path": args.fetches,
        "direct_mb_per_s": round(mb_per_s["direct"], 1),
        "routed_mb_per_s": round(mb_per_s["routed"], 1),
        "ratio_routed_to_direct": round(mb_per_s["routed"] / mb_per_s["direct"], 3),
        "direct_median_s": round(statistics.median(seconds["direct"]), 4),
        "routed_median_s": round(statistics.median(seconds["routed"]), 4),
        "network_rss_before_mb": round(rss_before, 1),
        "network_peak_rss_mb": network_rss.overall_mb,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
