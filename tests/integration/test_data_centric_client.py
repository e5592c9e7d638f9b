"""``DataCentricClient`` against a real ``pygrid node``: every method as the Owner and a data
scientist call it, and the errors they see. Jobs that finish need a real ``pygrid worker``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pygrid import plans
from pygrid.client import DataCentricClient, GridError, JobFailed
from pygrid.workloads import digits
from tests.support.servers import Server, free_port, running, stop

OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
SCIENTIST = ("scientist@example.org", "scientist-password-1")
PEOPLE_CSV = "age,city,score\n31,Paris,1.5\n45,Rome,2.5\n27,Paris,3.0\n52,Oslo,0.5\n"


@contextmanager
def worker(url: str, token: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``pygrid worker`` for ``url``, stopped by PID afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pygrid.cli", "worker", "--node", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**_environ(), "PYGRID_WORKER_TOKEN": token},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PYGRID_NODE", "PYGRID_WORKER_TOKEN"}}


def create_user(owner: DataCentricClient, email: str, password: str, role: str) -> None:
    """``POST /users`` as the Owner."""
    owner.http.json("POST", "/users", json={"email": email, "password": password, "role": role})


def digits_npz() -> bytes:
    data = digits.load()
    buffer = io.BytesIO()
    np.savez(buffer, x=data.x_train.numpy(), y=data.y_train.numpy())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "log", env=OWNER) as server:
        yield server


@pytest.fixture(scope="module")
def owner(node: Server) -> Iterator[DataCentricClient]:
    with DataCentricClient(node.url) as client:
        client.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
        yield client


@pytest.fixture(scope="module")
def scientist(node: Server, owner: DataCentricClient) -> Iterator[DataCentricClient]:
    create_user(owner, *SCIENTIST, role="data_scientist")
    with DataCentricClient(node.url) as client:
        client.login(*SCIENTIST)
        yield client


@pytest.fixture(scope="module")
def digits_set(owner: DataCentricClient) -> dict[str, Any]:
    return owner.upload_dataset(
        digits_npz(), name="digits", tags=["digits", "images"], target="y", description="8x8"
    )


@pytest.fixture(scope="module")
def people(owner: DataCentricClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("people") / "people.csv"
    path.write_text(PEOPLE_CSV)
    return owner.upload_dataset(path, name="people", tags="census, people", target="score")


def test_an_upload_from_a_path_bytes_or_tensors_records_the_schema(
    owner: DataCentricClient, digits_set: dict[str, Any], people: dict[str, Any]
) -> None:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(3, 2),
        "b": torch.tensor([1, 0, 1]),
    }

    from_tensors = owner.upload_dataset(tensors, name="tensors", target="b")

    assert digits_set["schema"]["rows"] == 1500
    assert digits_set["schema"]["source_format"] == "npz"  # sniffed from the bytes
    assert [(c["name"], c["dtype"], c["shape"]) for c in digits_set["schema"]["columns"]] == [
        ("x", "float32", [64]),
        ("y", "int64", []),
    ]
    assert people["schema"]["source_format"] == "csv"
    assert people["tags"] == ["census", "people"]
    city = next(c for c in people["schema"]["columns"] if c["name"] == "city")
    assert city["categories"] == ["Oslo", "Paris", "Rome"]
    assert from_tensors["schema"]["source_format"] == "safetensors"
    assert from_tensors["schema"]["rows"] == 3
    assert {d["name"] for d in owner.datasets()} >= {"digits", "people", "tensors"}
    assert owner.dataset(people) == owner.dataset(people["id"]) == people


def test_a_data_scientist_finds_datasets_by_tag_and_text_and_gets_mocks(
    scientist: DataCentricClient, digits_set: dict[str, Any], people: dict[str, Any]
) -> None:
    by_tags = scientist.search(tags=["digits", "images"])
    by_text = scientist.search(q="CENSUS")
    by_both = scientist.search(tags="digits", q="people")
    mock = scientist.mock(digits_set)
    csv = scientist.mock_bytes(people, fmt="csv").decode()

    assert [d["id"] for d in by_tags] == [digits_set["id"]]
    assert [d["id"] for d in by_text] == [people["id"]]
    assert by_both == []
    assert set(mock) == {"x", "y"}
    assert mock["x"].dtype == torch.float32 and mock["x"].shape[1:] == (64,)
    assert mock["y"].dtype == torch.int64 and 0 <= int(mock["y"].min()) <= int(mock["y"].max()) <= 9
    assert csv.splitlines()[0] == "age,city,score"


def test_only_the_owner_updates_and_deletes_datasets(
    owner: DataCentricClient, scientist: DataCentricClient
) -> None:
    dataset = owner.upload_dataset(PEOPLE_CSV.encode(), name="scratch", fmt="csv")

    updated = owner.update_dataset(dataset, description="new", tags="a,b", auto_release_epsilon=1.5)
    cleared = owner.update_dataset(dataset["id"], auto_release_epsilon=None)
    with pytest.raises(GridError) as refused:
        scientist.update_dataset(dataset, name="mine")
    with pytest.raises(GridError) as not_deleted:
        scientist.delete_dataset(dataset)
    owner.delete_dataset(dataset)
    with pytest.raises(GridError) as gone:
        owner.dataset(dataset)

    assert (updated["description"], updated["tags"]) == ("new", ["a", "b"])
    assert updated["auto_release_epsilon"] == 1.5
    assert cleared["auto_release_epsilon"] is None
    assert refused.value.status == not_deleted.value.status == 403
    assert "upload_datasets" in refused.value.message
    assert gone.value.status == 404


def test_a_job_is_submitted_from_a_module_with_train_conveniences(
    scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    job = scientist.submit_job(
        digits_set,
        "train",
        model=digits.mlp(),
        epochs=2,
        batch_size=64,
        lr=0.1,
        privacy={"epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0},
    )

    assert job["state"] == "pending_review"
    assert job["files"] == ["model"]
    assert "aten::linear" in job["ops"]
    assert job["spec"]["train"] == {
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.1,
        "loss": "cross_entropy",
        "optimizer": "sgd",
    }
    assert (job["spec"]["features"], job["spec"]["target"]) == (["x"], "y")
    assert 0 < job["epsilon"] <= 2.0
    assert scientist.job(job) == scientist.job(job["id"])
    assert job["id"] in [j["id"] for j in scientist.jobs()]


def test_a_plan_job_sends_the_plan_and_its_params(
    scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    model = digits.mlp()
    params = {name: p.detach() for name, p in model.named_parameters()}

    job = scientist.submit_job(
        digits_set, "train", plan=plans.training_plan(model), params=params, train={"epochs": 1}
    )

    assert sorted(job["files"]) == ["params", "plan"]
    assert job["epsilon"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "predict"}, "kind must be one of"),
        ({"kind": "evaluate", "epochs": 3}, "only apply to train jobs"),
        ({"kind": "train", "model": "not a model"}, "expected an nn.Module"),
        ({"kind": "train", "plan": torch.nn.Linear(1, 1)}, "expected a ScriptModule or bytes"),
    ],
)
def test_bad_job_arguments_are_refused_before_sending(
    scientist: DataCentricClient, digits_set: dict[str, Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        scientist.submit_job(digits_set, **kwargs)


def test_a_refused_operator_or_spec_surfaces_the_nodes_message(
    scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    with pytest.raises(GridError) as unknown_column:
        scientist.submit_job(digits_set, "train", model=digits.mlp(), features=["nope"])

    assert unknown_column.value.status == 422
    assert "nope" in str(unknown_column.value) + repr(unknown_column.value.detail)


def test_reviewers_approve_and_deny_and_a_data_scientist_may_not(
    owner: DataCentricClient, scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    first = scientist.submit_job(digits_set, "evaluate", model=digits.mlp())
    second = scientist.submit_job(digits_set, "evaluate", model=digits.mlp())

    with pytest.raises(GridError) as forbidden:
        scientist.approve(first)
    pending = [j["id"] for j in owner.pending()]
    approved = owner.approve(first, reason="looks fine")
    denied = owner.deny(second["id"], reason="not this month")
    with pytest.raises(GridError) as twice:
        owner.approve(first)
    with pytest.raises(JobFailed) as failed:
        scientist.wait(second)

    assert forbidden.value.status == 403
    assert "triage_requests" in forbidden.value.message
    assert {first["id"], second["id"]} <= set(pending)
    assert (approved["state"], approved["review_reason"]) == ("queued", "looks fine")
    assert (denied["state"], denied["review_reason"]) == ("denied", "not this month")
    assert twice.value.status == 409
    assert (failed.value.state, failed.value.reason) == ("denied", "not this month")
    assert "denied: not this month" in str(failed.value)
    assert first["id"] in [j["id"] for j in owner.jobs(state="queued")]


def test_a_requester_cancels_and_waiting_reports_it(
    scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    job = scientist.submit_job(digits_set, "evaluate", model=digits.mlp())

    cancelled = scientist.cancel(job)
    seen: list[str] = []
    with pytest.raises(JobFailed) as failed:
        scientist.wait(job, on_progress=lambda j: seen.append(j["state"]))

    assert cancelled["state"] == "cancelled"
    assert failed.value.state == "cancelled"
    assert seen == ["cancelled"]


def test_waiting_on_a_job_no_worker_runs_times_out(
    owner: DataCentricClient, scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    job = owner.approve(scientist.submit_job(digits_set, "evaluate", model=digits.mlp()))

    with pytest.raises(TimeoutError, match=f"job {job['id']} is still queued"):
        scientist.wait(job, timeout=0)


def test_an_unreleased_result_is_refused_with_the_nodes_reason(
    owner: DataCentricClient, scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    job = owner.approve(scientist.submit_job(digits_set, "evaluate", model=digits.mlp()))

    with pytest.raises(GridError) as no_result:
        scientist.result(job)
    with pytest.raises(GridError) as no_release:
        owner.release(job)

    assert no_result.value.status == no_release.value.status == 409
    assert "queued" in no_result.value.message


def test_budgets_are_set_by_the_owner_and_seen_by_their_holder(
    owner: DataCentricClient, scientist: DataCentricClient, people: dict[str, Any]
) -> None:
    budget = owner.set_budget(people, SCIENTIST[0], 4.0)

    mine = scientist.budgets(people)
    everyone = owner.budgets(dataset=people["id"], user_email=SCIENTIST[0])
    with pytest.raises(GridError) as forbidden:
        scientist.set_budget(people, SCIENTIST[0], 100.0)
    with pytest.raises(GridError) as nobody:
        owner.set_budget(people, "nobody@example.org", 1.0)

    assert (budget["epsilon_limit"], budget["epsilon_spent"], budget["epsilon_remaining"]) == (
        4.0,
        0.0,
        4.0,
    )
    assert mine == everyone == [budget]
    assert forbidden.value.status == 403
    assert nobody.value.status == 404


def test_the_audit_log_filters_by_dataset_job_and_action(
    owner: DataCentricClient, scientist: DataCentricClient, people: dict[str, Any]
) -> None:
    job = scientist.submit_job(people, "statistics", statistics=_age_stats())
    owner.deny(job, reason="audit test")

    for_job = owner.audit(job=job)
    denials = owner.audit(action="job.deny", limit=1)
    for_dataset = owner.audit(dataset=people)
    with pytest.raises(GridError) as forbidden:
        scientist.audit()

    assert [e["action"] for e in for_job] == ["job.deny", "job.submit"]
    assert denials[0]["job_id"] == job["id"] and len(denials) == 1
    assert {e["dataset_id"] for e in for_dataset} == {people["id"]}
    assert "dataset.upload" in {e["action"] for e in for_dataset}
    assert forbidden.value.status == 403


def test_worker_tokens_are_shown_once_listed_and_revoked(
    owner: DataCentricClient, scientist: DataCentricClient
) -> None:
    created = owner.create_worker_token("gpu-box", expires_in_days=7)

    listed = {t["id"]: t for t in owner.worker_tokens()}
    owner.revoke_worker_token(created)
    revoked = {t["id"]: t for t in owner.worker_tokens()}[created["id"]]
    with pytest.raises(GridError) as forbidden:
        scientist.create_worker_token("mine")

    assert created["token"].startswith(f"pgw_{created['id']}_")
    assert created["expires_at"] is not None
    assert listed[created["id"]]["name"] == "gpu-box"
    assert "token" not in listed[created["id"]]
    assert revoked["revoked_at"] is not None
    assert forbidden.value.status == 403


def test_a_job_or_dataset_is_an_id_or_the_apis_dict(owner: DataCentricClient) -> None:
    with pytest.raises(TypeError, match="int id or the dict"):
        owner.job("3")


def test_an_unreachable_node_is_a_grid_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with DataCentricClient(url) as client, pytest.raises(GridError) as unreachable:
        client.login(*SCIENTIST)

    assert unreachable.value.status is None
    assert str(unreachable.value) == f"cannot reach {url}: ConnectionError"


# A real Worker runs these jobs: results, sign-off against the budget, auto-release. -----------


@pytest.fixture(scope="module")
def running_worker(
    node: Server, owner: DataCentricClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    token = owner.create_worker_token("test-worker")["token"]
    with worker(node.url, token, tmp_path_factory.mktemp("worker") / "log") as process:
        yield process


def _age_stats() -> dict[str, Any]:
    return {"columns": [{"name": "age", "stats": ["count", "mean"], "lower": 0, "upper": 100}]}


@pytest.mark.slow
@pytest.mark.usefixtures("running_worker")
def test_an_over_budget_result_is_withheld_until_the_budget_allows_it(
    owner: DataCentricClient, scientist: DataCentricClient, tmp_path: Path
) -> None:
    people = owner.upload_dataset(PEOPLE_CSV.encode(), name="people-budget", fmt="csv")
    owner.set_budget(people, SCIENTIST[0], 0.5)
    job = scientist.submit_job(
        people, "statistics", statistics=_age_stats(), privacy={"epsilon": 1.0}
    )
    owner.approve(job)
    finished = owner.wait(job, timeout=300, until=("finished",))
    before_release = scientist.job(job)

    with pytest.raises(GridError) as over_budget:
        owner.release(job)
    held = scientist.job(job)
    with pytest.raises(GridError) as withheld:
        scientist.result(job)
    owner.set_budget(people, SCIENTIST[0], 2.0)
    released = owner.release(job)
    result = scientist.result(job)

    assert finished["result_available"] is True  # to the Owner
    assert before_release["result_available"] is False  # not yet to the data scientist
    assert over_budget.value.status == 409
    assert (held["state"], held["budget"]["spent"]) == ("finished", 0.0)
    assert held["withheld_reason"]
    assert withheld.value.status in (403, 409)
    assert released["state"] == "released"
    assert released["budget"]["spent"] == pytest.approx(1.0)
    assert set(result) == {"age.count", "age.mean"}
    assert scientist.budgets(people)[0]["epsilon_remaining"] == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.usefixtures("running_worker")
def test_a_released_model_loads_into_the_module(
    owner: DataCentricClient, scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    owner.set_budget(digits_set, SCIENTIST[0], 10.0)
    owner.update_dataset(digits_set, auto_release_epsilon=5.0)
    job = scientist.submit_job(
        digits_set,
        "train",
        model=digits.mlp(),
        epochs=1,
        batch_size=256,
        lr=0.5,
        privacy={"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0},
    )
    owner.approve(job)
    states: list[str] = []

    released = scientist.wait(job, timeout=300, on_progress=lambda j: states.append(j["state"]))
    model = scientist.result(job, model=digits.mlp())
    tensors = scientist.result(job)

    assert released["state"] == "released" and states[-1] == "released"
    assert isinstance(model, torch.nn.Sequential)
    assert set(tensors) == set(digits.mlp().state_dict())
    assert not torch.equal(model.state_dict()["0.weight"], digits.mlp().state_dict()["0.weight"])
    assert released["budget"]["spent"] == pytest.approx(released["epsilon"])


@pytest.mark.slow
@pytest.mark.usefixtures("running_worker")
def test_a_job_that_fails_in_the_sandbox_raises_job_failed(
    owner: DataCentricClient, scientist: DataCentricClient, digits_set: dict[str, Any]
) -> None:
    wrong_width = torch.nn.Linear(10, 10)  # digits rows have 64 features
    job = owner.approve(scientist.submit_job(digits_set, "evaluate", model=wrong_width))

    with pytest.raises(JobFailed) as as_reviewer:
        owner.wait(job, timeout=300)
    with pytest.raises(JobFailed) as as_requester:
        scientist.wait(job, timeout=0)

    assert as_reviewer.value.state == as_requester.value.state == "failed"
    assert as_reviewer.value.reason  # reviewers see the sandbox's error
    assert str(as_requester.value) == f"job {job['id']} failed"  # an error can carry data
