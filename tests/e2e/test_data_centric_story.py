"""The whole data-centric story over real HTTP, with a real ``pygrid worker`` process: the owner
uploads the digits training set, a data scientist finds it by tag, trains an MLP on it with and
without DP, and gets weights back only after the owner signs off within the budget."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pygrid.client import DataCentricClient
from pygrid.client.http import GridError
from pygrid.workloads import digits
from tests.support.servers import Server, free_port, running, stop

pytestmark = pytest.mark.slow
OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
SCIENTIST = ("scientist@example.org", "scientist-password-1")
# DP-SGD at epsilon 3, delta 1e-5 on 1500 rows (tuned in tests/unit/test_runner.py)
DP_TRAIN = {"epochs": 15, "batch_size": 256, "lr": 0.5, "loss": "cross_entropy", "optimizer": "sgd"}
DP = {"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}
TRAIN = {"epochs": 20, "batch_size": 32, "lr": 0.1, "loss": "cross_entropy", "optimizer": "sgd"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("story")
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "node.log", env=OWNER) as server:
        owner = DataCentricClient(server.url)
        owner.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
        owner.http.json(
            "POST",
            "/users",
            json={"email": SCIENTIST[0], "password": SCIENTIST[1], "role": "data_scientist"},
        )
        token = owner.create_worker_token("story")["token"]
        with (tmp / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pygrid.cli", "worker", "--node", server.url],
                env={**os.environ, "PYGRID_WORKER_TOKEN": token},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            yield server
        finally:
            stop(worker)


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load()


@pytest.fixture(scope="module")
def dataset(node: Server, data: digits.Digits) -> dict[str, object]:
    owner = _owner(node)
    buffer = io.BytesIO()
    np.savez(buffer, x=data.x_train.numpy(), y=data.y_train.numpy())
    return owner.upload_dataset(
        buffer.getvalue(),
        name="digits-train",
        tags=["digits", "images"],
        description="8x8 handwritten digits",
        target="y",
        fmt="npz",
    )


def _owner(node: Server) -> DataCentricClient:
    client = DataCentricClient(node.url)
    client.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
    return client


def _scientist(node: Server) -> DataCentricClient:
    client = DataCentricClient(node.url)
    client.login(*SCIENTIST)
    return client


def _train(
    node: Server, data: digits.Digits, train: dict[str, object], privacy: dict[str, float] | None
) -> tuple[dict[str, object], float, DataCentricClient]:
    scientist, owner = _scientist(node), _owner(node)
    found = scientist.search(tags=["digits"])
    assert [d["name"] for d in found] == ["digits-train"]
    mock = scientist.mock(found[0])
    assert mock["x"].shape[1:] == (64,) and not any(
        bool((row == data.x_train).all(dim=1).any()) for row in mock["x"][:20]
    )
    job = scientist.submit_job(found[0], "train", model=digits.mlp(), train=train, privacy=privacy)
    assert job["state"] == "pending_review"
    pending = owner.pending()
    assert [j["id"] for j in pending] == [job["id"]] and pending[0]["requester_email"] == SCIENTIST[
        0
    ]
    owner.approve(job, reason="digits MLP is fine")
    finished = scientist.wait(job, until=("finished", "released"), timeout=600)
    assert finished["state"] == "finished"
    with pytest.raises(GridError) as withheld:
        scientist.result(job)
    assert withheld.value.status == 403 and "sign-off" in withheld.value.message
    owner.release(job)
    model = scientist.result(job, model=digits.mlp())
    with torch.no_grad():
        accuracy = float((model(data.x_test).argmax(dim=1) == data.y_test).float().mean())
    return scientist.job(job), accuracy, scientist


def test_training_without_dp_reaches_093(
    node: Server, data: digits.Digits, dataset: dict[str, object]
) -> None:
    job, accuracy, _ = _train(node, data, TRAIN, None)
    assert job["state"] == "released" and job["epsilon"] is None
    assert accuracy >= 0.93, accuracy


def test_dp_training_reaches_080_and_charges_the_accountants_epsilon(
    node: Server, data: digits.Digits, dataset: dict[str, object]
) -> None:
    from pygrid.privacy import dpsgd

    owner = _owner(node)
    owner.set_budget(dataset, SCIENTIST[0], 5.0)
    job, accuracy, scientist = _train(node, data, DP_TRAIN, DP)
    privacy = job["spec"]["privacy"]
    expected = dpsgd.epsilon(
        privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"], DP["delta"]
    )
    assert job["epsilon"] == pytest.approx(expected) and job["epsilon"] <= DP["epsilon"]
    budget = scientist.budgets(dataset)[0]
    assert budget["epsilon_spent"] == pytest.approx(job["epsilon"], abs=1e-12)
    assert accuracy >= 0.80, accuracy


def test_an_exhausted_budget_withholds_the_result_without_charging(
    node: Server, dataset: dict[str, object]
) -> None:
    owner, scientist = _owner(node), _scientist(node)
    spent = scientist.budgets(dataset)[0]["epsilon_spent"] if scientist.budgets(dataset) else 0.0
    owner.set_budget(dataset, SCIENTIST[0], spent + 0.5)
    job = scientist.submit_job(
        dataset,
        "statistics",
        statistics={"columns": [{"name": "y", "stats": ["count", "histogram"], "bins": 10}]},
        privacy={"epsilon": 1.0},
    )
    owner.approve(job)
    scientist.wait(job, until=("finished",), timeout=300)
    with pytest.raises(GridError) as refused:
        owner.release(job)
    assert refused.value.status == 409 and "budget" in refused.value.message
    assert scientist.budgets(dataset)[0]["epsilon_spent"] == pytest.approx(spent)
    assert "budget" in scientist.job(job)["withheld_reason"]
    with pytest.raises(GridError):
        scientist.result(job)
