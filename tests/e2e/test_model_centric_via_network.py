"""Model-centric FL entirely through a Network: the data scientist and the devices reach the
Node only as ``<network>/nodes/<id>`` (the SDK's ``node_id=``), on real server processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pygrid.client import FLClient, ModelCentricFLClient
from pygrid.workloads import digits
from tests.support.network import joined_node, network_server
from tests.support.servers import Server

pytestmark = pytest.mark.slow
OWNER = {"PYGRID_OWNER_EMAIL": "host@example.org", "PYGRID_OWNER_PASSWORD": "host-password-1"}
DEVICES = 3
CYCLES = 2


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """A Network and a Node that joined it as ``alice``: (network, node)."""
    with (
        network_server(tmp_path) as network,
        joined_node(tmp_path, network.url, "alice", env=OWNER) as node,
    ):
        yield network, node


def test_a_process_trains_and_its_checkpoints_come_back_through_the_network(
    grid: tuple[Server, Server],
) -> None:
    # Prepare: the owner hosts through the Network; devices must pass a speed test
    network, node = grid
    owner = ModelCentricFLClient(network.url, node_id="alice")
    owner.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
    model = digits.mlp()
    client_config = {"name": "routed", "version": "1", "batch_size": 8, "lr": 0.1, "max_updates": 2}
    server_config = {
        "min_workers": DEVICES,
        "max_workers": DEVICES,
        "min_diffs": DEVICES,
        "max_diffs": DEVICES,
        "pool_selection": "iterate",
        "num_cycles": CYCLES,
        "minimum_download_speed": 0.001,
        "minimum_upload_speed": 0.001,
    }
    hosted = owner.host_federated_training(model, client_config, server_config)
    rng = torch.Generator().manual_seed(0)
    shards = [(torch.rand(16, 64, generator=rng), torch.randint(0, 10, (16,), generator=rng))]
    shards *= DEVICES
    devices = [FLClient(network.url, node_id="alice").new_job("routed", "1") for _ in shards]
    # Execute: every device trains in every cycle (authenticate, speed test, cycle-request,
    # get-model, get-plan, report), each cycle closed by the Node's scheduler
    outcomes = []
    for cycle in range(1, CYCLES + 1):
        outcomes.append([job.run_cycle(x, y) for job, (x, y) in zip(devices, shards, strict=True)])
        _wait_for_cycles(owner, hosted["process_id"], cycle)
    first = owner.retrieve_model("routed", "1", checkpoint=0)
    latest = owner.retrieve_model("routed", "1")
    direct = ModelCentricFLClient(node.url)
    direct.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
    latest_direct = direct.retrieve_model("routed", "1")
    status = owner.status(hosted["process_id"])
    # Assert: trained through the route, checkpoints fetched through it equal the Node's own
    assert all(job.client.http.url == f"{network.url}/nodes/alice" for job in devices)
    assert all(o.status == "reported" for cycle in outcomes for o in cycle)
    assert all(job.requires_speed_test for job in devices)
    assert [c["number"] for c in status["checkpoints"]] == list(range(CYCLES + 1))
    assert status["state"] == "completed"
    assert any(not torch.equal(first[n], latest[n]) for n in first)
    for name, tensor in latest.items():
        assert torch.equal(tensor, latest_direct[name]), name
    expected = {n: p.detach().double() for n, p in model.named_parameters()}
    for cycle in outcomes:
        total = sum(o.num_samples for o in cycle)
        for name in expected:
            step = sum(o.diff[name].double() * o.num_samples for o in cycle) / total
            expected[name] = expected[name] - step
    for name, tensor in expected.items():
        assert torch.allclose(latest[name].double(), tensor, atol=1e-5), name
    log = network.output()
    for route in ("cycle-request", "get-model", "get-plan", "report", "retrieve-model"):
        assert f"/nodes/alice/model-centric/{route}" in log, route


def _wait_for_cycles(owner: ModelCentricFLClient, process_id: int, cycles: int) -> None:
    deadline = time.monotonic() + 60
    while owner.status(process_id)["cycles_done"] < cycles:
        assert time.monotonic() < deadline, f"cycle {cycles} did not close"
        time.sleep(0.1)
