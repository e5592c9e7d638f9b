"""Report ingest and aggregation on a real Node, against numpy summing the same diffs in memory.

For each case (P parameters, N diffs) a fresh ``pygrid node`` hosts a model of exactly P float32
parameters (P / 1M layers ``Linear(1000, 1000, bias=False)``, with its training plan from
``pygrid.plans.training_plan``) and server_config max_workers = max_diffs = min_diffs = N,
pool_selection iterate, one cycle, fedavg. N devices then speak the real protocol without
training: ``authenticate`` and ``cycle-request`` (the "join" phase), then ``report`` of a random
float32 diff (the "ingest" phase, timed from the first upload to the last 200), 8 uploads at a
time. The last report fills the cycle and the Node's scheduler aggregates it; aggregation time is
the ``aggregation_seconds`` the Node records in the cycle's metrics.

Diffs are drawn from a pool of 16 distinct random diffs (N / 16 copies each, like
bench/aggregate_math.py): generating 1000 distinct 10M-parameter diffs would cost the client more
CPU than the Node it measures. 16 x 4 MB is far beyond any CPU cache, so the baseline gains nothing
from the reuse.

Baseline, same run: numpy adds the same N float32 arrays (pool[i % 16]) one at a time into an
accumulator (``np.add(acc, diff, out=acc)``): a streaming sum, memory O(model) like the Node's,
which is the fair comparison (stacking N diffs and summing would need O(N x model) memory).
``numpy_f32_s`` uses a float32 accumulator (the primary baseline, the ratios are against it);
``numpy_f64_s`` a float64 one, which is what the Node accumulates in.

Node peak RSS (gunicorn master + workers, sampled every 50 ms) is reported per phase; it must not
grow with N: ``rss_ratio_n_max_to_n_min`` compares the largest and smallest N of one model size.

Hosting a 10M model sends model + plan (80 MB) in one request, over the default 64 MiB limit:
the Node is started with PYGRID_MAX_CONTENT_LENGTH at 256 MiB.

The 10M x 1000 case is 40 GB of uploads written (fsynced) to disk and read back (4.4 min on its
own on the 2-core dev VM, 62 GB of free disk required): it runs only with ``--full`` (and only if
the disk has room); the JSON says what was skipped and why. ``--cases 10M_x_1000`` picks cases.

Requests whose keep-alive connection the Node dropped as they were sent are retried once and
counted (``client_retries_dropped_keepalive``; see bench/fl_round.py).

Prints one JSON line. Run: ``.venv/bin/python bench/aggregate.py [--quick] [--full]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
import torch
from _grid import (
    MIB,
    CountingRetry,
    RssSampler,
    log,
    node,
    owner_client,
    retry_dropped_connections,
    rounded,
    wait_for_cycles,
)

from pygrid import serde

POOL = 16
UPLOAD_THREADS = 8
PER_LAYER = 1_000_000
MAX_CONTENT_LENGTH = 256 * MIB  # host-training carries model + plan: 80 MB at 10M parameters


def make_model(params: int) -> torch.nn.Module:
    """``params / 1M`` layers of Linear(1000, 1000, bias=False): exactly ``params`` parameters."""
    if params % PER_LAYER:
        raise ValueError(f"params must be a multiple of {PER_LAYER}")
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1000, 1000, bias=False) for _ in range(params // PER_LAYER)]
    return torch.nn.Sequential(*layers)


def make_pool(model: torch.nn.Module) -> tuple[list[bytes], list[list[np.ndarray]]]:
    """POOL distinct random diffs: safetensors payloads and the same values as numpy arrays."""
    generator = torch.Generator().manual_seed(1)
    payloads, arrays = [], []
    for _ in range(POOL):
        diff = {
            name: torch.randn(p.shape, generator=generator) * 1e-3
            for name, p in model.named_parameters()
        }
        payloads.append(serde.dump(diff))
        arrays.append([t.numpy() for t in diff.values()])
    return payloads, arrays


def numpy_sum(arrays: list[list[np.ndarray]], count: int, dtype: Any) -> float:
    """Seconds to add ``count`` diffs (pool[i % POOL]) one at a time into a ``dtype`` sum."""
    sums = [np.zeros(a.shape, dtype=dtype) for a in arrays[0]]
    started = time.perf_counter()
    for index in range(count):
        for total, array in zip(sums, arrays[index % POOL], strict=True):
            np.add(total, array, out=total)
    return time.perf_counter() - started


class Devices:
    """N devices speaking the protocol through a small thread pool, one session per thread."""

    def __init__(self, url: str, name: str, deadline: float) -> None:
        self.url = url
        self.name = name
        self.deadline = deadline
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = retry_dropped_connections(requests.Session())
        session: requests.Session = self._local.session
        return session

    def _post(self, path: str, **kwargs: Any) -> Any:
        if time.monotonic() > self.deadline:
            raise TimeoutError("the case ran out of time")
        response = self._session().post(f"{self.url}{path}", timeout=600, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def join(self, _: int) -> tuple[str, str]:
        """authenticate + cycle-request: (worker_id, request_key)."""
        worker = self._post("/model-centric/authenticate", json={"model_name": self.name})
        answer = self._post(
            "/model-centric/cycle-request",
            json={"worker_id": worker["worker_id"], "model": self.name, "version": "1"},
        )
        if answer["status"] != "accepted":
            raise RuntimeError(f"cycle-request rejected: {answer}")
        return worker["worker_id"], answer["request_key"]

    def report(self, worker_id: str, request_key: str, payload: bytes) -> None:
        """POST the diff."""
        self._post(
            "/model-centric/report",
            data={
                "worker_id": worker_id,
                "request_key": request_key,
                "num_samples": "10",
                "metrics": "{}",
            },
            files={"diff": ("diff.safetensors", payload, "application/octet-stream")},
        )


def timed_map(function: Callable[..., Any], *iterables: Any) -> tuple[list[Any], float]:
    """``function`` over the iterables with UPLOAD_THREADS threads; results and wall seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        results = list(pool.map(function, *iterables))
    return results, time.perf_counter() - started


def run_case(params: int, diffs: int, budget: float) -> dict[str, Any]:
    """One fresh Node, N devices, one cycle of P-parameter diffs."""
    from pygrid.plans import training_plan

    model = make_model(params)
    payloads, arrays = make_pool(model)
    payload_mb = len(payloads[0]) / MIB
    model_mb = params * 4 / MIB
    name = f"bench-agg-{params // PER_LAYER}m-{diffs}"
    client_config = {"name": name, "version": "1", "batch_size": 10, "lr": 0.01, "max_updates": 1}
    server_config = {
        "min_workers": diffs,
        "max_workers": diffs,
        "min_diffs": diffs,
        "max_diffs": diffs,
        "pool_selection": "iterate",
        "num_cycles": 1,
        "cycle_length": 3 * 3600,
        "aggregation": {"method": "fedavg"},
    }
    figures: dict[str, Any] = {"params": params, "diffs": diffs, "payload_mb": round(payload_mb, 2)}
    with node(max_content_length=MAX_CONTENT_LENGTH) as server, RssSampler(server.pid) as rss:
        deadline = time.monotonic() + budget
        figures["node_idle_rss_mb"] = rss.peak_mb
        owner = owner_client(server.url)
        plan = training_plan(model)
        started = time.perf_counter()
        hosted = owner.host_federated_training(
            model, client_config, server_config, plans={"training_plan": plan}
        )
        figures["host_s"] = rounded(time.perf_counter() - started, 3)
        devices = Devices(server.url, name, deadline)
        retries_before = CountingRetry.count
        rss.reset()
        joined, join_s = timed_map(devices.join, range(diffs))
        figures["join_s"] = rounded(join_s, 3)
        figures["node_peak_rss_join_mb"] = rss.peak_mb
        log(f"P={params} N={diffs}: {diffs} devices joined in {join_s:.1f} s; reporting")
        rss.reset()
        workers = [w for w, _ in joined]
        keys = [k for _, k in joined]
        chosen = [payloads[i % POOL] for i in range(diffs)]
        _, ingest_s = timed_map(devices.report, workers, keys, chosen)
        acked = time.perf_counter()
        figures["node_peak_rss_ingest_mb"] = rss.peak_mb
        log(f"P={params} N={diffs}: ingest {ingest_s:.1f} s; waiting for the aggregation")
        rss.reset()
        status = wait_for_cycles(
            owner, hosted["process_id"], 1, max(5, deadline - time.monotonic())
        )
        figures["close_wall_s"] = rounded(time.perf_counter() - acked, 3)
        figures["node_peak_rss_aggregate_mb"] = rss.peak_mb
        tracebacks = server.tracebacks()
    aggregation_s = float(status["cycles"][0]["metrics"]["aggregation_seconds"])
    figures["node_peak_rss_mb"] = rss.overall_mb  # whole case, hosting included
    log(f"P={params} N={diffs}: aggregation {aggregation_s:.2f} s; numpy baseline")
    numpy_f32 = numpy_sum(arrays, diffs, np.float32)
    numpy_f64 = numpy_sum(arrays, diffs, np.float64)
    figures.update(
        {
            "ingest_s": rounded(ingest_s, 3),
            "ingest_diffs_per_s": rounded(diffs / ingest_s, 2),
            "ingest_mb_per_s": rounded(diffs * payload_mb / ingest_s, 1),
            "aggregation_s": rounded(aggregation_s, 3),
            "aggregation_diffs_per_s": rounded(diffs / aggregation_s, 2),
            "aggregation_mb_per_s": rounded(diffs * model_mb / aggregation_s, 1),
            "numpy_f32_s": rounded(numpy_f32),
            "numpy_f64_s": rounded(numpy_f64),
            "numpy_f32_mb_per_s": rounded(diffs * model_mb / numpy_f32, 1),
            "ratio_aggregation_to_numpy": rounded(aggregation_s / numpy_f32, 2),
            "ratio_aggregation_to_numpy_f64": rounded(aggregation_s / numpy_f64, 2),
            "ratio_ingest_plus_aggregation_to_numpy": rounded(
                (ingest_s + aggregation_s) / numpy_f32, 1
            ),
            "node_tracebacks": len(tracebacks),
            "client_retries_dropped_keepalive": CountingRetry.count - retries_before,
        }
    )
    if tracebacks:
        log("Node tracebacks:\n" + "\n\n".join(tracebacks[:3]))
    return figures


def main() -> None:
    """Run every case that fits and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1M and 10M x 10 and 40")
    parser.add_argument("--full", action="store_true", help="also 10M x 1000 (40 GB of uploads)")
    parser.add_argument("--budget", type=float, default=900, help="seconds per case at most")
    parser.add_argument("--cases", help="only these cases, e.g. 1M_x_1000,10M_x_1000")
    args = parser.parse_args()
    if args.quick:
        sizes, counts = [1_000_000, 10_000_000], [10, 40]
    else:
        sizes, counts = [1_000_000, 10_000_000], [100, 1000]
    result: dict[str, Any] = {
        "bench": "aggregate",
        "quick": args.quick,
        "upload_threads": UPLOAD_THREADS,
        "distinct_diffs": POOL,
        "node_command": f"pygrid node with PYGRID_MAX_CONTENT_LENGTH={MAX_CONTENT_LENGTH // MIB} MiB",
        "cases": {},
        "skipped": {},
    }
    for params in sizes:
        for diffs in counts:
            label = f"{params // PER_LAYER}M_x_{diffs}"
            if args.cases and label not in args.cases.split(","):
                continue
            upload_gb = params * 4 * diffs / 1e9
            if params == sizes[-1] and diffs == counts[-1] and not (args.full or args.quick):
                result["skipped"][label] = (
                    f"{upload_gb:.0f} GB of uploads written (fsynced) to the Node's disk and read "
                    f"back: needs ~{1.5 * upload_gb + 2:.0f} GB free disk and ~4.5 min on its own "
                    "(measured here), which with the other cases nears the 10 min budget; run "
                    "with --full"
                )
                continue
            free = shutil.disk_usage(tempfile.gettempdir()).free
            if free < 1.5 * params * 4 * diffs + 2e9:
                result["skipped"][label] = (
                    f"needs ~{1.5 * upload_gb:.0f} GB free in {tempfile.gettempdir()}, "
                    f"has {free / 1e9:.0f} GB"
                )
                continue
            log(f"case {label}")
            result["cases"][label] = run_case(params, diffs, args.budget)
    for params in sizes:
        prefix = f"{params // PER_LAYER}M_x_"
        ran = sorted(
            (int(k[len(prefix) :]), v) for k, v in result["cases"].items() if k.startswith(prefix)
        )
        if len(ran) >= 2:
            low, high = ran[0], ran[-1]
            result[f"{prefix}rss_ratio_n{high[0]}_to_n{low[0]}"] = rounded(
                high[1]["node_peak_rss_mb"] / low[1]["node_peak_rss_mb"], 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
