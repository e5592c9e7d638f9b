"""``NetworkClient`` and the SDK's ``node_id=`` against a real ``pygrid network`` and a real
``pygrid node`` that joined it: find a dataset or a process through the Network, then work with
its Node through the Network's route only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import torch

from pygrid.client import (
    DataCentricClient,
    GridError,
    ModelCentricClient,
    ModelCentricFLClient,
    NetworkClient,
)
from pygrid.client.http import base_url
from pygrid.workloads import digits
from tests.support.network import joined_node, network_server
from tests.support.servers import Server, wait_for

pytestmark = pytest.mark.slow

OWNER = {"PYGRID_OWNER_EMAIL": "alice@example.org", "PYGRID_OWNER_PASSWORD": "alice-password-1"}
CREDENTIALS = (OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
PEOPLE_CSV = b"age,city,score\n31,Paris,1.5\n45,Rome,2.5\n27,Paris,3.0\n52,Oslo,0.5\n"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """A Network and a Node (``alice``, heartbeating every 0.5 s) that joined it."""
    tmp = tmp_path_factory.mktemp("grid")
    env = {**OWNER, "PYGRID_HEARTBEAT_SECONDS": "0.5"}
    with (
        network_server(tmp) as network,
        joined_node(tmp, network.url, "alice", env=env) as node,
    ):
        yield network, node


@pytest.fixture(scope="module")
def published(grid: tuple[Server, Server]) -> dict[str, Any]:
    """A dataset and an FL process, both put on the Node through the Network by its Owner."""
    network, _ = grid
    with DataCentricClient(network.url, node_id="alice") as owner:
        owner.login(*CREDENTIALS)
        dataset = owner.upload_dataset(
            PEOPLE_CSV, name="people", tags=["people", "tabular"], description="who lives where"
        )
    host = ModelCentricFLClient(network.url, node_id="alice")
    host.login(*CREDENTIALS)
    config = {"name": "mnist-ish", "version": "2", "batch_size": 4, "lr": 0.1, "max_updates": 1}
    process = host.host_federated_training(digits.mlp(), config, {"max_workers": 2})
    return {"dataset": dataset, "process": process}


@pytest.fixture
def network_client(grid: tuple[Server, Server]) -> Iterator[NetworkClient]:
    with NetworkClient(grid[0].url) as client:
        yield client


def test_a_live_search_finds_the_dataset_and_leads_to_it(
    grid: tuple[Server, Server], published: dict[str, Any], network_client: NetworkClient
) -> None:
    # Execute
    hits = network_client.search(tags="People", q="lives", live=True, timeout=5)
    # Assert
    network, _ = grid
    assert [(h.node_id, h.dataset["name"]) for h in hits] == [("alice", "people")]
    hit = hits[0]
    assert hits.unanswered == [] and hits.nodes_searched == 1
    assert hit.routed_url == f"{network.url}/nodes/alice" and hit.node_status == "online"
    assert hit.mock_url == f"{network.url}/nodes/alice/data-centric/datasets/1/mock"
    with DataCentricClient(network.url, node_id=hit.node_id) as scientist:
        scientist.login(*CREDENTIALS)
        mock = scientist.mock(hit.dataset)
        direct = requests.get(
            hit.mock_url,
            params={"format": "csv"},
            headers={"Authorization": f"Bearer {scientist.http.token}"},
            timeout=30,
        )
    assert set(mock) == {"age", "city", "score"}
    assert direct.status_code == 200 and direct.text.startswith("age,city,score")


def test_a_cached_search_sees_the_dataset_once_the_node_has_heartbeaten(
    published: dict[str, Any], network_client: NetworkClient
) -> None:
    hits = wait_for("the catalogue to reach the Network", lambda: network_client.search("people"))
    assert [h.dataset["name"] for h in hits] == ["people"]
    assert network_client.search(tags=["people", "images"]) == []
    assert network_client.search(q="nobody-has-this") == []


def test_search_model_finds_the_process_by_name_and_version(
    published: dict[str, Any], network_client: NetworkClient
) -> None:
    hits = network_client.search_model("mnist-ish", live=True)
    assert [(h.node_id, h.process["version"]) for h in hits] == [("alice", "2")]
    assert network_client.search_model("mnist-ish", version="9", live=True) == []
    cached = wait_for(
        "the process in the catalogue", lambda: network_client.search_model("mnist-ish")
    )
    assert cached[0].process["name"] == "mnist-ish"
    assert cached[0].dataset is None and cached[0].mock_url is None


def test_nodes_and_the_route_to_each(
    grid: tuple[Server, Server], network_client: NetworkClient
) -> None:
    network, node = grid
    nodes = network_client.nodes()
    assert [(n["id"], n["url"], n["status"]) for n in nodes] == [("alice", node.url, "online")]
    assert network_client.node_url("alice") == f"{network.url}/nodes/alice"
    answer = requests.get(f"{network_client.node_url('alice')}/status", timeout=30)
    assert answer.json()["id"] == "alice"


def test_the_model_centric_client_retrieves_through_the_network(
    grid: tuple[Server, Server], published: dict[str, Any]
) -> None:
    network, node = grid
    routed = ModelCentricClient(network.url, node_id="alice")
    routed.login(*CREDENTIALS)
    direct = ModelCentricFLClient(node.url)
    direct.login(*CREDENTIALS)
    through, straight = (c.retrieve_model("mnist-ish", "2") for c in (routed, direct))
    assert routed.processes() == direct.processes()
    assert all(torch.equal(through[name], straight[name]) for name in straight)


def test_an_unknown_node_is_a_grid_error_naming_it(grid: tuple[Server, Server]) -> None:
    with (
        DataCentricClient(grid[0].url, node_id="nobody") as client,
        pytest.raises(GridError) as refused,
    ):
        client.datasets()
    assert refused.value.status == 404
    assert refused.value.detail["code"] == "unknown_node"


@pytest.mark.parametrize(
    ("url", "node_id", "expected"),
    [
        ("http://net:7000/", None, "http://net:7000"),
        ("http://net:7000/", "alice", "http://net:7000/nodes/alice"),
        ("http://net:7000/base", "a b/c", "http://net:7000/base/nodes/a%20b%2Fc"),
    ],
)
def test_base_url_routes_through_a_network_only_with_a_node_id(
    url: str, node_id: str | None, expected: str
) -> None:
    assert base_url(url, node_id) == expected


def test_an_empty_node_id_is_refused() -> None:
    with pytest.raises(ValueError, match="node_id"):
        DataCentricClient("http://net:7000", node_id="")
