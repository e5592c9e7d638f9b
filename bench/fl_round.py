"""Federated rounds of the reference workload on a real Node, against the same FedAvg in-process.

The reference workload (``pygrid.workloads.digits``: MLP 64-64-10, IID split, batch 10, lr 0.05,
one epoch per cycle, every device in every cycle) runs with K devices for C cycles through
``pygrid.simulation.Simulation``: each device is a thread speaking HTTP to a real ``pygrid node``
(authenticate, cycle-request, get-model, get-plan once, train with the TorchScript plan, report)
and the Node's scheduler closes each cycle at max_diffs. One fresh Node per K.

Baseline, measured in the same run: the same K-device FedAvg in this process with plain PyTorch
(eager ``nn.Module`` + ``torch.optim.SGD``, same shards, batches, lr and sample weights; devices
trained one after the other; no HTTP, no Node, no serialisation). Its cycles are interleaved with
the Node's (Node cycle i, then in-process cycle i, while the Node idles), so load from others on a
shared machine, which comes and goes, hits both alike. It runs after a warm-up (torch.optim's
first step costs ~2 s of lazy imports). This process runs torch with one intra-op thread (see
``main``) so that a busy shared machine slows the baseline by its fair share, not 10-30x. The same
seeds give the same batches, so its final parameters match the Node's to float rounding
(``max_abs_param_gap_node_vs_inprocess``). The figure to watch is ``ratio_node_to_inprocess``
(median seconds per cycle); absolute seconds depend on the machine.

The SDK does not retry a request whose keep-alive connection the Node closed (gunicorn closes
connections idle for 2 s) in the instant it was sent, which at K=100 (cycles of ~2 s) fails a run
every few cycles with "Connection reset by peer". The bench mounts a retry-once adapter on every
device's session and reports how many requests needed it (``client_retries_dropped_keepalive``).

Node peak RSS is the maximum over the run of the summed RSS of the gunicorn master and its
workers, sampled every 50 ms in a background thread.

Prints one JSON line. Run: ``.venv/bin/python bench/fl_round.py [--quick] [--devices 10,100]
[--cycles 20]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import torch
from _grid import (
    CountingRetry,
    RssSampler,
    log,
    node,
    owner_client,
    percentile,
    retry_dropped_connections,
    rounded,
)

from pygrid.simulation import Simulation, reference_configs
from pygrid.workloads import digits

SEED = 0


class InProcessFedAvg:
    """Plain-PyTorch FedAvg of the reference workload, one cycle per ``cycle()`` call."""

    def __init__(
        self, shards: list[tuple[torch.Tensor, torch.Tensor]], client_config: dict[str, Any]
    ) -> None:
        self.shards = shards
        self.batch_size = int(client_config["batch_size"])
        self.lr = float(client_config["lr"])
        self.max_updates = int(client_config["max_updates"])
        self.params = {n: p.detach().clone() for n, p in digits.mlp().named_parameters()}
        self.local = digits.mlp()
        self.generators = [torch.Generator().manual_seed(SEED + k) for k in range(len(shards))]

    def cycle(self) -> float:
        """Every device trains once from the current params; FedAvg; returns seconds."""
        started = time.perf_counter()
        sums = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in self.params.items()}
        total = 0
        for (x, y), generator in zip(self.shards, self.generators, strict=True):
            self.local.load_state_dict(self.params)
            optimiser = torch.optim.SGD(self.local.parameters(), lr=self.lr)
            order = torch.randperm(len(x), generator=generator)
            batches = min(self.max_updates, math.ceil(len(x) / self.batch_size))
            for b in range(batches):
                index = order[b * self.batch_size : (b + 1) * self.batch_size]
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(self.local(x[index]), y[index])
                loss.backward()
                optimiser.step()
            samples = min(len(x), batches * self.batch_size)
            with torch.no_grad():
                for name, param in self.local.named_parameters():
                    sums[name] += samples * (self.params[name] - param).double()
            total += samples
        self.params = {
            n: (p.double() - sums[n] / total).to(p.dtype) for n, p in self.params.items()
        }
        return time.perf_counter() - started


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, p90 and total of per-cycle seconds."""
    return {
        "s_per_cycle_median": rounded(statistics.median(seconds)),
        "s_per_cycle_p90": rounded(percentile(seconds, 0.9)),
        "total_s": rounded(sum(seconds), 3),
    }


def run(data: digits.Digits, devices: int, cycles: int, timeout: float) -> dict[str, Any]:
    """K devices x C cycles on a fresh Node, each cycle followed by one in-process cycle."""
    shards = digits.split_iid(data.x_train, data.y_train, devices)
    name = f"bench-digits-k{devices}"
    client_config, server_config = reference_configs(
        name, "1", devices, cycles, max(len(s[0]) for s in shards)
    )
    baseline = InProcessFedAvg(shards, client_config)
    with node() as server, RssSampler(server.pid) as rss:
        idle_mb = rss.peak_mb
        owner = owner_client(server.url)
        hosted = owner.host_federated_training(digits.mlp(), client_config, server_config)
        simulation = Simulation(
            server.url, owner, hosted["process_id"], name, "1", shards, seed=SEED, timeout=timeout
        )
        for job in simulation.jobs:
            retry_dropped_connections(job.client.http.session)
        retries_before = CountingRetry.count
        records, base_seconds = [], []
        for cycle in range(cycles):
            records.append(simulation.run_cycle())
            base_seconds.append(baseline.cycle())
            log(
                f"K={devices} cycle {cycle + 1}/{cycles}: Node {records[-1].seconds:.3f} s, "
                f"in-process {base_seconds[-1]:.3f} s"
            )
        final = owner.retrieve_model(name, "1")
        tracebacks = server.tracebacks()
    seconds = [r.seconds for r in records]
    aggregation = [float(r.metrics.get("aggregation_seconds", float("nan"))) for r in records]
    node_figures = {
        **summary(seconds),
        "first_cycle_s": rounded(seconds[0]),
        "aggregation_s_median": rounded(statistics.median(aggregation)),
        "test_accuracy": rounded(digits.accuracy(final, data.x_test, data.y_test)),
        "node_peak_rss_mb": rss.peak_mb,
        "node_idle_rss_mb": idle_mb,
        "node_tracebacks": len(tracebacks),
        "client_retries_dropped_keepalive": CountingRetry.count - retries_before,
    }
    if tracebacks:
        log("Node tracebacks:\n" + "\n\n".join(tracebacks[:3]))
    base_figures = {
        **summary(base_seconds),
        "test_accuracy": rounded(digits.accuracy(baseline.params, data.x_test, data.y_test)),
    }
    gap = max(float((final[n] - baseline.params[n]).abs().max()) for n in final)
    return {
        "devices": devices,
        "node": node_figures,
        "inprocess": base_figures,
        "max_abs_param_gap_node_vs_inprocess": float(f"{gap:.3g}"),
        "ratio_node_to_inprocess": rounded(
            node_figures["s_per_cycle_median"] / base_figures["s_per_cycle_median"], 2
        ),
        "ratio_total_node_to_inprocess": rounded(
            node_figures["total_s"] / base_figures["total_s"], 2
        ),
    }


def main() -> None:
    """Measure every K and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", default="10,100", help="comma-separated K values")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 cycles")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per cycle at most")
    args = parser.parse_args()
    cycles = 3 if args.quick else args.cycles
    torch.manual_seed(SEED)
    # One intra-op thread for this process (simulated devices and baseline alike): with two, torch's
    # OpenMP barrier makes tiny-tensor training 10-30x slower whenever another process wants a
    # core (measured with 3 busy loops on this 2-core VM: 0.3-1.5 s per baseline cycle instead of
    # 0.08 s), which made the baseline meaningless on a shared machine. The Node is unaffected.
    torch.set_num_threads(1)
    data = digits.load()
    result: dict[str, Any] = {
        "bench": "fl_round",
        "workload": "digits MLP 64-64-10, IID, batch 10, lr 0.05, 1 epoch/cycle, fedavg",
        "cycles": cycles,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
    }
    # warm-up of the baseline: torch.optim's first step imports and compiles lazily (~2 s)
    InProcessFedAvg(
        digits.split_iid(data.x_train, data.y_train, 2),
        {"batch_size": 10, "lr": 0.05, "max_updates": 2},
    ).cycle()
    for devices in (int(k) for k in args.devices.split(",")):
        log(f"K={devices}")
        result[f"k{devices}"] = run(data, devices, cycles, args.timeout)
    if CountingRetry.count:
        log(f"requests retried after a dropped connection: {CountingRetry.reasons}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
