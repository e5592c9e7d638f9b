"""Model-centric FL on a real ``pygrid node`` over HTTP: the reference workload, non-IID data,
misbehaving devices, DP accounting, a Node killed mid-cycle, and closing at the deadline."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pygrid.client import FLClient, ModelCentricFLClient
from pygrid.simulation import Simulation, reference_configs
from pygrid.workloads import digits
from tests.support.servers import Server, free_port, running

pytestmark = pytest.mark.slow
OWNER = {"PYGRID_OWNER_EMAIL": "host@example.org", "PYGRID_OWNER_PASSWORD": "host-password-1"}
CYCLES = 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real Node for the workload tests (each hosts its own process)."""
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "log", env=OWNER) as server:
        yield server


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load()


def owner_client(url: str) -> ModelCentricFLClient:
    client = ModelCentricFLClient(url)
    client.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
    return client


def train(
    node: Server,
    name: str,
    shards: list[Any],
    aggregation: dict[str, Any] | None = None,
    cycles: int = CYCLES,
    tamper: Any = None,
) -> tuple[ModelCentricFLClient, Simulation, list[Any]]:
    owner = owner_client(node.url)
    client_config, server_config = reference_configs(
        name, "1", len(shards), cycles, max(len(s[0]) for s in shards), aggregation=aggregation
    )
    hosted = owner.host_federated_training(digits.mlp(), client_config, server_config)
    simulation = Simulation(node.url, owner, hosted["process_id"], name, "1", shards, tamper=tamper)
    records = [simulation.run_cycle() for _ in range(cycles)]
    return owner, simulation, records


def test_reference_workload_reaches_090_and_equals_fedavg_recomputed(
    node: Server, data: digits.Digits
) -> None:
    # Prepare
    shards = digits.split_iid(data.x_train, data.y_train, 10)
    # Execute
    owner, _, records = train(node, "digits-iid", shards)
    final = owner.retrieve_model("digits-iid", "1")
    # Assert: the Node's checkpoint is FedAvg of exactly the diffs the devices sent
    for name, tensor in _fedavg_replay(records).items():
        assert torch.allclose(final[name].double(), tensor, atol=1e-5), name
    assert digits.accuracy(final, data.x_test, data.y_test) >= 0.90
    checkpoints = [c["number"] for c in owner.status(1)["checkpoints"]]
    assert checkpoints == list(range(CYCLES + 1))


def test_non_iid_devices_still_reach_085(node: Server, data: digits.Digits) -> None:
    shards = digits.split_dirichlet(data.x_train, data.y_train, 20, alpha=0.5)
    owner, _, _ = train(node, "digits-dirichlet", shards)
    final = owner.retrieve_model("digits-dirichlet", "1")
    assert digits.accuracy(final, data.x_test, data.y_test) >= 0.85


def scale_two_devices(k: int, diff: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Devices 0 and 1 send their diff scaled by 100."""
    return {n: t * 100 for n, t in diff.items()} if k < 2 else diff


@pytest.mark.parametrize(
    ("aggregation", "survives"),
    [
        ({"method": "median"}, True),
        ({"method": "trimmed_mean", "trim_ratio": 0.2}, True),
        ({"method": "fedavg"}, False),
    ],
)
def test_robust_aggregators_survive_two_scaled_devices(
    node: Server, data: digits.Digits, aggregation: dict[str, Any], survives: bool
) -> None:
    shards = digits.split_iid(data.x_train, data.y_train, 10)
    name = f"digits-attacked-{aggregation['method']}"
    owner, _, _ = train(node, name, shards, aggregation=aggregation, tamper=scale_two_devices)
    accuracy = digits.accuracy(owner.retrieve_model(name, "1"), data.x_test, data.y_test)
    assert (accuracy >= 0.85) is survives, accuracy


def test_dp_fedavg_reports_the_accountants_epsilon_and_stops_at_the_target(
    node: Server, data: digits.Digits
) -> None:
    import dp_accounting

    # Prepare: a target that fits exactly 3 cycles
    dp = {
        "method": "dp_fedavg",
        "clip_norm": 1.0,
        "noise_multiplier": 1.1,
        "delta": 1e-5,
        "sampling_rate": 1.0,
    }

    def epsilon(cycles: int) -> float:
        accountant = dp_accounting.rdp.RdpAccountant()
        event = dp_accounting.PoissonSampledDpEvent(1.0, dp_accounting.GaussianDpEvent(1.1))
        accountant.compose(event, cycles)
        return float(accountant.get_epsilon(1e-5))

    target = (epsilon(3) + epsilon(4)) / 2
    shards = digits.split_iid(data.x_train, data.y_train, 5)
    # Execute
    owner, simulation, _ = train(
        node, "digits-dp", shards, {**dp, "target_epsilon": target}, cycles=3
    )
    status = owner.status(simulation.process_id)
    after = FLClient(node.url).new_job("digits-dp", "1").run_cycle(*shards[0])
    # Assert
    assert status["epsilon_spent"] == pytest.approx(epsilon(3), rel=1e-9)
    assert [c["epsilon"] for c in status["cycles"]] == pytest.approx(
        [epsilon(1), epsilon(2), epsilon(3)]
    )
    assert status["state"] == "completed"
    assert after.status == "rejected" and after.timeout is None


def test_a_node_killed_mid_cycle_loses_no_acknowledged_report(tmp_path: Path) -> None:
    # Prepare: a cycle that needs 6 diffs; 3 devices report, then the Node is killed with -9
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    model = digits.mlp()
    rng = torch.Generator().manual_seed(3)
    x, y = torch.rand(40, 64, generator=rng), torch.randint(0, 10, (40,), generator=rng)
    shards = [(x[i::6], y[i::6]) for i in range(6)]
    with running(args, port, tmp_path / "log1", env=OWNER) as server:
        owner = owner_client(server.url)
        client_config, server_config = reference_configs("durable", "1", 6, 1, 7)
        owner.host_federated_training(model, client_config, server_config)
        jobs = [FLClient(server.url).new_job("durable", "1") for _ in range(6)]
        first = [job.run_cycle(*shard) for job, shard in zip(jobs[:3], shards[:3], strict=True)]
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    # Execute: restart on the same data dir; the other 3 devices report with their own keys
    with running(args, port, tmp_path / "log2", env=OWNER) as server:
        owner = owner_client(server.url)
        for job in jobs[3:]:
            job.client.http.url = server.url
        rest = [job.run_cycle(*shard) for job, shard in zip(jobs[3:], shards[3:], strict=True)]
        deadline = time.monotonic() + 60
        while owner.status(1)["cycles_done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = owner.status(1)
        final = owner.retrieve_model("durable", "1", checkpoint=1)
    # Assert: exactly the 6 acknowledged diffs, each once
    outcomes = first + rest
    assert all(o.status == "reported" for o in outcomes)
    assert status["cycles"][0]["diffs_received"] == 6 and status["cycles"][0]["state"] == "closed"
    total = sum(o.num_samples for o in outcomes)
    for name, before in model.named_parameters():
        step = sum(o.diff[name].double() * o.num_samples for o in outcomes) / total
        assert torch.allclose(final[name].double(), before.detach().double() - step, atol=1e-5)
    blobs = [
        f.relative_to(tmp_path / "data" / "blobs").as_posix()
        for f in (tmp_path / "data" / "blobs").rglob("*")
        if f.is_file()
    ]
    assert "fl/1/checkpoints/1.safetensors" in blobs
    assert [b for b in blobs if "/diffs/" in b] == [], (
        "diff blobs are deleted once folded into a checkpoint"
    )


def test_the_scheduler_closes_a_cycle_at_its_deadline_without_another_report(node: Server) -> None:
    owner = owner_client(node.url)
    model = digits.mlp()
    client_config = {
        "name": "deadline",
        "version": "1",
        "batch_size": 4,
        "lr": 0.1,
        "max_updates": 1,
    }
    server_config = {
        "max_workers": 5,
        "max_diffs": 5,
        "min_diffs": 1,
        "cycle_length": 2,
        "pool_selection": "iterate",
    }
    hosted = owner.host_federated_training(model, client_config, server_config)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    outcome = FLClient(node.url).new_job("deadline", "1").run_cycle(x, y)
    assert outcome.status == "reported"
    deadline = time.monotonic() + 30
    while owner.status(hosted["process_id"])["cycles_done"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = owner.status(hosted["process_id"])
    assert status["cycles"][0]["state"] == "closed" and status["cycles"][0]["diffs_received"] == 1
    assert status["cycles"][1]["state"] == "open"


def _fedavg_replay(records: list[Any]) -> dict[str, torch.Tensor]:
    """The FedAvg trajectory recomputed in-process from the diffs the devices sent."""
    expected = {n: p.detach().double() for n, p in digits.mlp().named_parameters()}
    for record in records:
        total = sum(o.num_samples for o in record.outcomes)
        for name in expected:
            step = sum(o.diff[name].double() * o.num_samples for o in record.outcomes) / total
            expected[name] = expected[name] - step
    return expected


@pytest.mark.postgres
def test_two_replicas_on_postgresql_fold_each_cycle_exactly_once(
    tmp_path: Path, postgres_server: Any, data: digits.Digits
) -> None:
    import requests

    # Prepare: two replicas share one PostgreSQL database; each runs its own scheduler
    url = postgres_server.create_database("fl_replicas")
    port = free_port()
    args = [
        "node",
        "--port",
        str(port),
        "--num_replicas",
        "2",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    shards = digits.split_iid(data.x_train, data.y_train, 10)
    with running(args, port, tmp_path / "log", env={**OWNER, "DATABASE_URL": url}) as server:
        # Execute
        owner, simulation, records = train(server, "replicated", shards, cycles=5)
        status = owner.status(simulation.process_id)
        final = owner.retrieve_model("replicated", "1")
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    # Assert
    assert [c["number"] for c in status["checkpoints"]] == [0, 1, 2, 3, 4, 5]
    assert [c["diffs_received"] for c in status["cycles"]] == [10] * 5
    assert status["state"] == "completed"
    for name, tensor in _fedavg_replay(records).items():
        assert torch.allclose(final[name].double(), tensor, atol=1e-5), name
    assert "pygrid_fl_cycles_closed_total 5.0" in metrics
    assert 'pygrid_fl_reports_total{outcome="accepted"} 50.0' in metrics


def test_the_sdk_logs_in_again_when_its_token_stops_working(node: Server) -> None:
    owner = owner_client(node.url)
    owner.http.token = "expired-or-revoked"
    client_config = {
        "name": "relogin",
        "version": "1",
        "batch_size": 4,
        "lr": 0.1,
        "max_updates": 1,
    }
    hosted = owner.host_federated_training(digits.mlp(), client_config, {"max_workers": 1})
    assert owner.status(hosted["process_id"])["name"] == "relogin"
    assert owner.http.token != "expired-or-revoked"
