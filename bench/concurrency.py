"""1000 simulated devices at once against ``pygrid node --num_replicas 2``, over async HTTP.

Each device goes through the whole device protocol: ``authenticate`` -> ``cycle-request`` ->
``get-model`` -> ``get-plan`` -> ``report`` (a small random diff of the digits MLP's spec, made
with ``pygrid.serde.dump``; no training). Devices are coroutines on one asyncio loop with one
aiohttp session; a semaphore keeps at most ``--inflight`` (100) requests in flight, and a global
timeout bounds the run. The process has max_workers = max_diffs = min_diffs = N, pool_selection
iterate, so every device is accepted and the last report closes the cycle.

Every non-2xx answer and every exception counts as an error of its route (must be 0); latency is
measured per request from send (semaphore held) to the last byte of the answer.

Baseline, same run and same concurrency, before the FL run: N devices each send 5 ``GET /status``
(the cheapest route: no database work). Per-route p50 latency is reported as a ratio to the
``/status`` p50.

Prints one JSON line. Run: ``.venv/bin/python bench/concurrency.py [--quick] [--devices 1000]
[--inflight 100]``. Needs aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import torch
from _grid import RssSampler, log, node, owner_client, percentile, rounded, wait_for_cycles

from pygrid import serde
from pygrid.workloads import digits

ROUTES = ("authenticate", "cycle-request", "get-model", "get-plan", "report")
POOL = 16


class Stats:
    """Latencies, errors and status codes per route."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.codes: dict[str, Counter[int]] = defaultdict(Counter)
        self.samples: dict[str, str] = {}

    def error(self, route: str, what: str) -> None:
        self.errors[route] += 1
        self.samples.setdefault(route, what[:300])

    def summary(self, routes: tuple[str, ...]) -> dict[str, Any]:
        return {
            route: {
                "requests": len(self.latency[route]) + self.errors[route],
                "errors": self.errors[route],
                "p50_ms": rounded(1000 * percentile(self.latency[route], 0.5), 2),
                "p99_ms": rounded(1000 * percentile(self.latency[route], 0.99), 2),
            }
            for route in routes
        }


class Client:
    """One aiohttp session, a semaphore on requests in flight, stats per route."""

    def __init__(self, session: aiohttp.ClientSession, url: str, inflight: int) -> None:
        self.session = session
        self.url = url
        self.gate = asyncio.Semaphore(inflight)
        self.stats = Stats()

    async def call(self, route: str, method: str, path: str, **kwargs: Any) -> bytes | None:
        """The answer's body, or None after recording an error."""
        async with self.gate:
            started = time.perf_counter()
            try:
                async with self.session.request(method, f"{self.url}{path}", **kwargs) as answer:
                    body = await answer.read()
                    status = answer.status
            except Exception as exc:  # every failure counts, by route
                self.stats.error(route, f"{type(exc).__name__}: {exc}")
                return None
            elapsed = time.perf_counter() - started
        self.stats.codes[route][status] += 1
        if not 200 <= status < 300:
            self.stats.error(route, f"{status}: {body[:300].decode(errors='replace')}")
            return None
        self.stats.latency[route].append(elapsed)
        return body


async def status_device(client: Client) -> None:
    """The baseline device: five GET /status in a row."""
    for _ in range(5):
        await client.call("status", "GET", "/status")


async def fl_device(client: Client, name: str, diff: bytes) -> bool:
    """authenticate -> cycle-request -> get-model -> get-plan -> report; True if reported."""
    mc = "/model-centric"
    body = await client.call(
        "authenticate", "POST", f"{mc}/authenticate", json={"model_name": name}
    )
    if body is None:
        return False
    worker_id = json.loads(body)["worker_id"]
    body = await client.call(
        "cycle-request",
        "POST",
        f"{mc}/cycle-request",
        json={"worker_id": worker_id, "model": name, "version": "1"},
    )
    if body is None:
        return False
    answer = json.loads(body)
    if answer["status"] != "accepted":
        client.stats.error("cycle-request", f"rejected: {answer}")
        return False
    key = answer["request_key"]
    query = {"worker_id": worker_id, "request_key": key}
    model = await client.call(
        "get-model", "GET", f"{mc}/get-model", params={**query, "model_id": answer["model_id"]}
    )
    plan_id = answer["plans"]["training_plan"]
    plan = await client.call(
        "get-plan", "GET", f"{mc}/get-plan", params={**query, "plan_id": plan_id}
    )
    if model is None or plan is None:
        return False
    form = aiohttp.FormData()
    form.add_field("worker_id", worker_id)
    form.add_field("request_key", key)
    form.add_field("num_samples", "10")
    form.add_field("metrics", json.dumps({"loss": 1.0}))
    form.add_field(
        "diff", diff, filename="diff.safetensors", content_type="application/octet-stream"
    )
    return await client.call("report", "POST", f"{mc}/report", data=form) is not None


async def run_phase(
    url: str, inflight: int, devices: int, timeout: float, flow: Any, *args: Any
) -> tuple[Client, float, list[Any]]:
    """``devices`` coroutines of ``flow``; the client (stats), wall seconds and results."""
    connector = aiohttp.TCPConnector(limit=inflight)
    request_timeout = aiohttp.ClientTimeout(total=min(120, timeout))
    async with aiohttp.ClientSession(connector=connector, timeout=request_timeout) as session:
        client = Client(session, url, inflight)
        started = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(flow(client, *args, i) for i in range(devices))), timeout
        )
        return client, time.perf_counter() - started, results


def main() -> None:
    """Baseline, then the FL run; print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 devices")
    parser.add_argument("--timeout", type=float, default=480, help="seconds per phase at most")
    args = parser.parse_args()
    devices = 100 if args.quick else args.devices
    name = "bench-concurrency"

    generator = torch.Generator().manual_seed(0)
    template = dict(digits.mlp().named_parameters())
    diffs = [
        serde.dump(
            {n: torch.randn(p.shape, generator=generator) * 1e-3 for n, p in template.items()}
        )
        for _ in range(POOL)
    ]
    client_config = {"name": name, "version": "1", "batch_size": 10, "lr": 0.05, "max_updates": 2}
    server_config = {
        "min_workers": devices,
        "max_workers": devices,
        "min_diffs": devices,
        "max_diffs": devices,
        "pool_selection": "iterate",
        "num_cycles": 1,
        "cycle_length": 3600,
    }

    async def baseline_flow(client: Client, _: int) -> None:
        await status_device(client)

    async def device_flow(client: Client, index: int) -> bool:
        return await fl_device(client, name, diffs[index % POOL])

    result: dict[str, Any] = {
        "bench": "concurrency",
        "quick": args.quick,
        "devices": devices,
        "inflight": args.inflight,
        "replicas": args.replicas,
        "http_client": f"aiohttp {aiohttp.__version__}",
    }
    with node("--num_replicas", str(args.replicas)) as server, RssSampler(server.pid) as rss:
        owner = owner_client(server.url)
        hosted = owner.host_federated_training(digits.mlp(), client_config, server_config)
        log(f"baseline: {devices} x 5 GET /status, {args.inflight} in flight")
        base, base_wall, _ = asyncio.run(
            run_phase(server.url, args.inflight, devices, args.timeout, baseline_flow)
        )
        log(f"FL: {devices} devices, {args.inflight} requests in flight")
        rss.reset()
        fl, wall, reported = asyncio.run(
            run_phase(server.url, args.inflight, devices, args.timeout, device_flow)
        )
        log(f"FL: {sum(reported)} reported in {wall:.1f} s; waiting for the cycle to close")
        started = time.perf_counter()
        closed = None
        if all(reported):
            status = wait_for_cycles(owner, hosted["process_id"], 1, 120)
            closed = {
                "close_wall_s": rounded(time.perf_counter() - started, 3),
                "aggregation_s": status["cycles"][0]["metrics"].get("aggregation_seconds"),
                "diffs_received": status["cycles"][0]["diffs_received"],
            }
        tracebacks = server.tracebacks()
    status_p50 = percentile(base.stats.latency["status"], 0.5)
    routes = fl.stats.summary(ROUTES)
    for figures in routes.values():
        figures["p50_ratio_to_status"] = rounded(figures["p50_ms"] / (1000 * status_p50), 2)
    requests_made = sum(len(v) for v in fl.stats.latency.values()) + sum(fl.stats.errors.values())
    result.update(
        {
            "errors_total": sum(fl.stats.errors.values()),
            "reported": sum(reported),
            "routes": routes,
            "wall_s": rounded(wall, 3),
            "requests": requests_made,
            "requests_per_s": rounded(requests_made / wall, 1),
            "baseline_status": {
                **base.stats.summary(("status",))["status"],
                "wall_s": rounded(base_wall, 3),
                "requests_per_s": rounded(5 * devices / base_wall, 1),
            },
            "cycle": closed,
            "node_peak_rss_mb": rss.overall_mb,
            "node_peak_rss_fl_phase_mb": rss.peak_mb,
            "node_tracebacks": len(tracebacks),
        }
    )
    if fl.stats.samples or base.stats.samples:
        result["error_samples"] = {**base.stats.samples, **fl.stats.samples}
        result["status_codes"] = {r: dict(c) for r, c in fl.stats.codes.items()}
    if tracebacks:
        log("Node tracebacks:\n" + "\n\n".join(tracebacks[:3]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
