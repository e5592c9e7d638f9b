"""PyGrid's model-centric protocol over HTTP, on SQLite and PostgreSQL.

Each refusal is a 4xx JSON answer that changes nothing: the tests check the cycle afterwards.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
import torch

from pygrid import plans, serde
from pygrid.auth.roles import Role
from pygrid.db.models import utcnow
from pygrid.model_centric.closing import close_due_cycles
from tests.support.users import bearer

SECRET = "device-signing-secret-" + "x" * 20


@pytest.fixture
def app_kind() -> str:
    """Model-centric FL lives on the Node."""
    return "node"


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def host(
    client: Any,
    token: str,
    name: str = "mnist",
    version: str = "1.0",
    server: dict[str, Any] | None = None,
    plan_bytes: bytes | None = None,
    model_bytes: bytes | None = None,
    client_extra: dict[str, Any] | None = None,
) -> Any:
    model = tiny_model()
    client_config = {
        "name": name,
        "version": version,
        "batch_size": 2,
        "lr": 0.1,
        "max_updates": 5,
        **(client_extra or {}),
    }
    data = {
        "name": name,
        "version": version,
        "client_config": json.dumps(client_config),
        "server_config": json.dumps(
            server or {"max_workers": 2, "max_diffs": 1, "pool_selection": "iterate"}
        ),
        "model": (io.BytesIO(model_bytes or serde.dump(params_of(model))), "model.safetensors"),
        "plan:training_plan": (
            io.BytesIO(plan_bytes or plans.save_plan(plans.training_plan(model))),
            "plan.pt",
        ),
    }
    return client.post(
        "/model-centric/host-training",
        data=data,
        headers=bearer(token),
        content_type="multipart/form-data",
    )


def authenticate(client: Any, name: str = "mnist", **extra: Any) -> str:
    response = client.post("/model-centric/authenticate", json={"model_name": name, **extra})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["worker_id"])


def request_cycle(client: Any, worker_id: str, name: str = "mnist") -> dict[str, Any]:
    response = client.post(
        "/model-centric/cycle-request", json={"worker_id": worker_id, "model": name}
    )
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def report(
    client: Any,
    worker_id: str,
    key: str,
    diff: bytes,
    num_samples: int = 10,
    metrics: dict[str, Any] | None = None,
) -> Any:
    data = {
        "worker_id": worker_id,
        "request_key": key,
        "num_samples": str(num_samples),
        "metrics": json.dumps(metrics or {"loss": 0.5}),
        "diff": (io.BytesIO(diff), "diff.safetensors"),
    }
    return client.post("/model-centric/report", data=data, content_type="multipart/form-data")


def a_diff(scale: float = 0.01) -> dict[str, torch.Tensor]:
    return {n: torch.full_like(p, scale) for n, p in params_of(tiny_model()).items()}


def cycle_state(client: Any, token: str, process_id: int = 1) -> dict[str, Any]:
    status = client.get(f"/model-centric/processes/{process_id}", headers=bearer(token)).get_json()
    cycle: dict[str, Any] = status["cycles"][-1]
    return cycle


def close_now(app: Any, after: float = 0) -> list[int]:
    when = utcnow() + timedelta(seconds=after)
    return close_due_cycles(
        app.extensions["pygrid.db"].sessions, app.extensions["pygrid.blobs"], now=when
    )


def test_a_whole_cycle_moves_the_model_by_the_reported_diff(
    app: Any, client: Any, owner_token: str
) -> None:
    # Prepare
    hosted = host(client, owner_token)
    worker = authenticate(client)
    accepted = request_cycle(client, worker)
    key = accepted["request_key"]
    # Execute
    model = client.get(
        "/model-centric/get-model",
        query_string={"worker_id": worker, "request_key": key, "model_id": accepted["model_id"]},
    )
    plan = client.get(
        "/model-centric/get-plan",
        query_string={
            "worker_id": worker,
            "request_key": key,
            "plan_id": accepted["plans"]["training_plan"],
        },
    )
    reported = report(
        client, worker, key, serde.dump(a_diff()), metrics={"loss": 0.25, "accuracy": 0.5}
    )
    closed = close_now(app)
    latest = client.get(
        "/model-centric/retrieve-model",
        headers=bearer(owner_token),
        query_string={"name": "mnist", "version": "1.0"},
    )
    status = client.get("/model-centric/processes/1", headers=bearer(owner_token)).get_json()
    # Assert
    assert hosted.status_code == 201 and hosted.get_json() == {
        "process_id": 1,
        "name": "mnist",
        "version": "1.0",
    }
    assert accepted["status"] == "accepted" and accepted["client_config"]["batch_size"] == 2
    assert serde.load(model.data, max_bytes=10**6).keys() == params_of(tiny_model()).keys()
    assert plans.validate_plan(plan.data, max_bytes=10**7).ops
    assert reported.status_code == 200 and reported.get_json() == {"status": "success"}
    assert closed == [1]
    new = serde.load(latest.data, max_bytes=10**6)
    for name, before in params_of(tiny_model()).items():
        assert torch.allclose(new[name], before - 0.01, atol=1e-6)
    assert [c["state"] for c in status["cycles"]] == ["closed", "open"]
    assert status["cycles"][0]["metrics"]["loss"] == 0.25
    assert [c["number"] for c in status["checkpoints"]] == [0, 1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server": {"max_workers": 2, "colour": "red"}}, "colour"),
        ({"server": {"max_workers": 2, "aggregation": {"method": "fedsgd"}}}, "aggregation"),
        ({"server": {"min_workers": 3, "max_workers": 2}}, "min_workers"),
        ({"client_extra": {"momentum": 0.9}}, "momentum"),
        ({"model_bytes": b"not a model at all"}, "model"),
        ({"model_bytes": pickle.dumps({"w": [1.0]})}, "pickle"),
    ],
)
def test_host_training_refuses_bad_configs_and_files(
    client: Any, owner_token: str, change: dict[str, Any], message: str
) -> None:
    response = host(client, owner_token, **change)
    assert response.status_code == 422, response.get_json()
    assert message in json.dumps(response.get_json())
    assert client.get("/model-centric/processes", headers=bearer(owner_token)).get_json() == {
        "processes": []
    }


def test_a_plan_with_a_refused_op_is_refused_naming_it(client: Any, owner_token: str) -> None:
    class Seeding(torch.nn.Module):
        def forward(
            self, x: torch.Tensor, y: torch.Tensor, lr: float, params: list[torch.Tensor]
        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            torch.manual_seed(1)
            return x.sum(), y.sum(), params

    response = host(client, owner_token, plan_bytes=plans.save_plan(torch.jit.script(Seeding())))
    assert response.status_code == 422
    assert "aten::manual_seed" in response.get_json()["error"]


def test_same_name_and_version_is_a_conflict(client: Any, owner_token: str) -> None:
    assert host(client, owner_token).status_code == 201
    again = host(client, owner_token)
    assert again.status_code == 409
    assert (
        len(
            client.get("/model-centric/processes", headers=bearer(owner_token)).get_json()[
                "processes"
            ]
        )
        == 1
    )


def _pickle_diff() -> bytes:
    return pickle.dumps({n: t.numpy() for n, t in a_diff().items()})


def _with(name: str, value: torch.Tensor) -> bytes:
    diff = a_diff()
    diff[name] = value
    return serde.dump(diff)


BAD_DIFFS: dict[str, Callable[[], bytes]] = {
    "malformed": lambda: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    "pickle": _pickle_diff,
    "nan": lambda: _with("0.bias", torch.tensor([float("nan"), 0.0, 0.0])),
    "inf": lambda: _with("0.bias", torch.tensor([float("inf"), 0.0, 0.0])),
    "wrong shape": lambda: _with("0.bias", torch.zeros(4)),
    "wrong dtype": lambda: _with("0.bias", torch.zeros(3, dtype=torch.float64)),
    "missing name": lambda: serde.dump({k: v for k, v in a_diff().items() if k != "0.bias"}),
    "extra name": lambda: serde.dump({**a_diff(), "evil": torch.zeros(1)}),
}


@pytest.mark.parametrize("kind", sorted(BAD_DIFFS))
def test_bad_diffs_are_refused_and_change_nothing(client: Any, owner_token: str, kind: str) -> None:
    host(client, owner_token)
    worker = authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    response = report(client, worker, key, BAD_DIFFS[kind]())
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"].startswith("diff:")
    assert cycle_state(client, owner_token)["diffs_received"] == 0
    # the key still works: a device may fix its diff and report again
    assert report(client, worker, key, serde.dump(a_diff())).status_code == 200


def test_a_diff_over_the_size_limit_is_refused(app: Any, client: Any, owner_token: str) -> None:
    host(client, owner_token)
    worker = authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    app.config["MAX_CONTENT_LENGTH"] = 2048
    response = report(client, worker, key, serde.dump(a_diff()) + b"\x00" * 4096)
    assert response.status_code == 413
    assert cycle_state(client, owner_token)["diffs_received"] == 0


def test_keys_workers_and_repeats_are_checked(app: Any, client: Any, owner_token: str) -> None:
    host(
        client, owner_token, server={"max_workers": 3, "max_diffs": 2, "pool_selection": "iterate"}
    )
    worker, other = authenticate(client), authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    other_key = request_cycle(client, other)["request_key"]
    diff = serde.dump(a_diff())
    assert report(client, "no-such-worker", key, diff).status_code == 404
    assert report(client, worker, "wrong-key", diff).status_code == 401
    assert report(client, worker, other_key, diff).status_code == 401  # someone else's key
    assert report(client, worker, key, diff).status_code == 200
    second = report(client, worker, key, diff)
    assert second.status_code == 409 and "already" in second.get_json()["error"]
    assert cycle_state(client, owner_token)["diffs_received"] == 1
    assert close_now(app, after=3600) == [1]  # past the deadline with min_diffs=1
    late = report(client, other, other_key, diff)
    assert late.status_code == 409 and "closed" in late.get_json()["error"]


def test_cycle_requests_for_unknown_models_and_full_cycles(client: Any, owner_token: str) -> None:
    host(
        client,
        owner_token,
        server={"max_workers": 1, "pool_selection": "iterate", "cycle_length": 600},
    )
    unknown = client.post("/model-centric/authenticate", json={"model_name": "nope"})
    assert unknown.status_code == 404
    first, second = authenticate(client), authenticate(client)
    assert request_cycle(client, first)["status"] == "accepted"
    full = request_cycle(client, second)
    assert full["status"] == "rejected" and 0 < full["timeout"] <= 600
    wrong_version = client.post(
        "/model-centric/cycle-request", json={"worker_id": first, "model": "mnist", "version": "9"}
    )
    assert wrong_version.status_code == 404


def test_training_ends_after_num_cycles(app: Any, client: Any, owner_token: str) -> None:
    host(
        client,
        owner_token,
        server={"max_workers": 1, "max_diffs": 1, "num_cycles": 1, "pool_selection": "iterate"},
    )
    worker = authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    report(client, worker, key, serde.dump(a_diff()))
    close_now(app)
    over = request_cycle(client, worker)
    assert over == {"status": "rejected", "timeout": None, "reason": "training is over"}
    status = client.get("/model-centric/processes/1", headers=bearer(owner_token)).get_json()
    assert status["state"] == "completed" and len(status["checkpoints"]) == 2


def test_a_short_cycle_is_extended_at_its_deadline_then_closes(
    app: Any, client: Any, owner_token: str
) -> None:
    host(
        client,
        owner_token,
        server={
            "max_workers": 3,
            "min_diffs": 2,
            "max_diffs": 3,
            "cycle_length": 60,
            "pool_selection": "iterate",
        },
    )
    worker = authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    report(client, worker, key, serde.dump(a_diff()))
    assert close_now(app, after=61) == []
    extended = cycle_state(client, owner_token)
    assert extended["extensions"] == 1 and extended["state"] == "open"
    other = authenticate(client)
    report(client, other, request_cycle(client, other)["request_key"], serde.dump(a_diff()))
    assert close_now(app, after=200) == [1]


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


DEVICE_TOKENS: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "wrong signature": lambda: jwt.encode(
        {"sub": "d", "exp": int(time.time()) + 60}, "z" * 40, algorithm="HS256"
    ),
    "alg none": lambda: (
        f"{_b64({'alg': 'none'})}.{_b64({'sub': 'd', 'exp': int(time.time()) + 60})}."
    ),
    "expired": lambda: jwt.encode(
        {"sub": "d", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256"
    ),
    "no exp": lambda: jwt.encode({"sub": "d"}, SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("kind", sorted(DEVICE_TOKENS))
def test_bad_device_tokens_are_refused(client: Any, owner_token: str, kind: str) -> None:
    host(
        client,
        owner_token,
        server={"max_workers": 2, "authentication": {"type": "hs256", "secret": SECRET}},
    )
    response = client.post(
        "/model-centric/authenticate",
        json={"model_name": "mnist", "auth_token": DEVICE_TOKENS[kind]()},
    )
    assert response.status_code == 401, response.get_json()
    good = jwt.encode({"sub": "phone-1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert authenticate(client, auth_token=good)
    status = client.get("/model-centric/processes/1", headers=bearer(owner_token)).get_json()
    assert status["server_config"]["authentication"]["secret"] == "***"


def test_only_the_host_retrieves_its_model(client: Any, user_token: Callable[[Role], str]) -> None:
    alice, bob = user_token(Role.data_scientist), user_token(Role.data_scientist)
    assert host(client, alice).status_code == 201
    query = {"name": "mnist", "version": "1.0"}
    assert (
        client.get(
            "/model-centric/retrieve-model", headers=bearer(bob), query_string=query
        ).status_code
        == 403
    )
    assert client.get("/model-centric/processes/1", headers=bearer(bob)).status_code == 403
    assert client.get("/model-centric/processes", headers=bearer(bob)).get_json() == {
        "processes": []
    }
    assert (
        client.get(
            "/model-centric/retrieve-model", headers=bearer(alice), query_string=query
        ).status_code
        == 200
    )
    missing = client.get(
        "/model-centric/retrieve-model",
        headers=bearer(alice),
        query_string={**query, "checkpoint": "7"},
    )
    assert missing.status_code == 404


def test_speed_test_and_speed_requirements(client: Any, owner_token: str) -> None:
    host(client, owner_token, server={"max_workers": 2, "minimum_download_speed": 10})
    answer = client.post("/model-centric/authenticate", json={"model_name": "mnist"}).get_json()
    worker = answer["worker_id"]
    assert answer["requires_speed_test"] is True
    sample = client.get(
        "/model-centric/speed-test", query_string={"worker_id": worker, "size": 1000}
    )
    assert len(sample.data) == 1000
    upload = client.post(
        "/model-centric/speed-test", query_string={"worker_id": worker}, data=b"x" * 500
    )
    assert upload.get_json() == {"status": "success", "bytes": 500}
    missing = client.post(
        "/model-centric/cycle-request", json={"worker_id": worker, "model": "mnist"}
    )
    assert missing.status_code == 422 and "speed test" in missing.get_json()["error"]
    slow = client.post(
        "/model-centric/cycle-request", json={"worker_id": worker, "model": "mnist", "download": 1}
    )
    assert slow.status_code == 422
    fast = client.post(
        "/model-centric/cycle-request", json={"worker_id": worker, "model": "mnist", "download": 50}
    )
    assert fast.get_json()["status"] == "accepted"


def test_downloads_need_the_right_key_and_stay_inside_the_process(
    client: Any, owner_token: str
) -> None:
    host(client, owner_token)
    host(client, owner_token, name="other")
    worker = authenticate(client)
    accepted = request_cycle(client, worker)
    key = accepted["request_key"]
    other_model = request_cycle(client, authenticate(client, name="other"), name="other")[
        "model_id"
    ]

    def get(path: str, **query: Any) -> Any:
        return client.get(f"/model-centric/{path}", query_string={"worker_id": worker, **query})

    assert get("get-model", request_key="wrong", model_id=accepted["model_id"]).status_code == 401
    assert get("get-model", request_key=key, model_id=other_model).status_code == 404
    assert get("get-plan", request_key="wrong", plan_id=1).status_code == 401
    assert get("get-plan", request_key=key, plan_id=999).status_code == 404
    assert get("get-model", request_key=key, model_id=accepted["model_id"]).status_code == 200


def test_metrics_count_reports_requests_and_closed_cycles(
    app: Any, client: Any, owner_token: str
) -> None:
    host(client, owner_token)
    worker = authenticate(client)
    key = request_cycle(client, worker)["request_key"]
    report(client, worker, key, b"garbage")
    report(client, worker, key, serde.dump(a_diff()))
    assert app.extensions["pygrid.scheduler"].run_once() == [1]  # the full cycle closes now
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pygrid_fl_reports_total{outcome="accepted"} 1.0' in text
    assert 'pygrid_fl_reports_total{outcome="rejected"} 1.0' in text
    assert 'pygrid_fl_cycle_requests_total{outcome="accepted"} 1.0' in text
    assert "pygrid_fl_cycles_closed_total 1.0" in text
    assert "pygrid_fl_aggregation_seconds_count 1.0" in text
