"""Simulated devices against a real Node over HTTP: the demo, the e2e tests and the benchmarks
all drive federated training through this one module.

Each cycle, every device requests a place, trains on its shard with the downloaded plan and
reports its diff, concurrently in threads; then the driver waits until the Node has closed the
cycle (the Node's scheduler closes it at max_diffs, not this driver).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from pygrid.client.device import CycleOutcome, FLClient, FLJob
from pygrid.client.http import GridError
from pygrid.client.model_centric import ModelCentricFLClient

Shard = tuple[torch.Tensor, torch.Tensor]
# (device index, diff) -> the diff to report instead: lets tests model misbehaving devices
Tamper = Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class CycleRecord:
    """What happened in one cycle."""

    sequence: int
    outcomes: list[CycleOutcome]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def reference_configs(
    name: str,
    version: str,
    devices: int,
    cycles: int,
    samples_per_device: int,
    aggregation: dict[str, Any] | None = None,
    batch_size: int = 10,
    lr: float = 0.05,
    cycle_length: float = 600,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """client_config and server_config of the reference workload: every device in every cycle."""
    client_config = {
        "name": name,
        "version": version,
        "batch_size": batch_size,
        "lr": lr,
        "max_updates": -(-samples_per_device // batch_size),
        "extras": {"epochs": 1},
    }
    server_config = {
        "min_workers": devices,
        "max_workers": devices,
        "min_diffs": devices,
        "max_diffs": devices,
        "pool_selection": "iterate",
        "num_cycles": cycles,
        "cycle_length": cycle_length,
        "aggregation": aggregation or {"method": "fedavg"},
    }
    return client_config, server_config


class Simulation:
    """K simulated devices training one hosted process, cycle after cycle."""

    def __init__(
        self,
        node_url: str,
        owner: ModelCentricFLClient,
        process_id: int,
        name: str,
        version: str,
        shards: Sequence[Shard],
        tamper: Tamper | None = None,
        seed: int = 0,
        timeout: float = 300,
    ) -> None:
        self.owner = owner
        self.process_id = process_id
        self.shards = list(shards)
        self.tamper = tamper
        self.timeout = timeout
        self.jobs: list[FLJob] = [FLClient(node_url).new_job(name, version) for _ in shards]
        self.generators = [torch.Generator().manual_seed(seed + k) for k in range(len(shards))]
        if tamper is not None:
            for k, job in enumerate(self.jobs):
                job.diff_filter = functools.partial(tamper, k)

    def cycles_done(self) -> int:
        """Cycles the Node has closed so far."""
        return int(self.owner.status(self.process_id)["cycles_done"])

    def run_cycle(self) -> CycleRecord:
        """Every device trains once; returns when the Node has closed the cycle."""
        before = self.cycles_done()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(32, len(self.jobs))) as pool:
            futures = [
                pool.submit(job.run_cycle, shard[0], shard[1], gen)
                for job, shard, gen in zip(self.jobs, self.shards, self.generators, strict=True)
            ]
            outcomes = [f.result() for f in futures]
        rejected = [o for o in outcomes if o.status != "reported"]
        if rejected:
            raise GridError(
                None, f"{len(rejected)} devices were rejected: timeout {rejected[0].timeout}"
            )
        status = self._wait_for(before + 1)
        closed = status["cycles"][before]
        return CycleRecord(
            before + 1, outcomes, time.perf_counter() - started, closed.get("metrics") or {}
        )

    def _wait_for(self, cycles_done: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.owner.status(self.process_id)
            if status["cycles_done"] >= cycles_done:
                return status
            if time.monotonic() > deadline:
                raise GridError(
                    None, f"the Node did not close cycle {cycles_done} within {self.timeout} s"
                )
            time.sleep(0.05)
