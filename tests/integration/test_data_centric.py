"""Data-centric FL on a Node over HTTP (in-process client), on SQLite and PostgreSQL: datasets,
search, jobs, review, the Worker protocol with leases, budgets, release and the audit log.

The Worker here is the test itself speaking the protocol; tests/integration/test_worker_agent.py
runs the real ``pygrid worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from pygrid.auth.roles import Role
from tests.support.data_centric import npz_bytes, report, submit, upload, worker_token
from tests.support.users import bearer

CSV = b"age,income,city\n34,52000.5,paris\n51,61000.25,lyon\n29,38000.75,paris\n45,47000.0,nice\n"
STATS = {"columns": [{"name": "age", "stats": ["count", "sum", "mean", "histogram"], "bins": 4}]}


@pytest.fixture
def app_kind() -> str:
    """Data-centric FL lives on Nodes."""
    return "node"


@pytest.fixture
def dataset(client: Any, owner_token: str) -> dict[str, Any]:
    response = upload(client, owner_token, CSV, "people.csv", description="census sample")
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


@pytest.fixture
def scientist(app: Any, client: Any) -> tuple[str, str]:
    """(email, token) of a data scientist."""
    from sqlalchemy.orm import Session

    from pygrid import users
    from tests.support.users import PASSWORD, login

    email = "ds@example.org"
    with Session(app.extensions["pygrid.db"].engine) as session:
        users.create_user(session, email, PASSWORD, Role.data_scientist)
    return email, login(client, email)


def _count(client: Any, token: str, path: str, key: str) -> int:
    return len(client.get(path, headers=bearer(token)).get_json()[key])


def _claim(client: Any, token: str) -> Any:
    return client.post("/data-centric/worker/claim", json={"wait": 0}, headers=bearer(token))


def _stats_result() -> bytes:
    return save_safetensors({"age.count": np.array([4.0]), "age.sum": np.array([159.0])})


def _approved_stats_job(
    client: Any,
    owner_token: str,
    ds_token: str,
    dataset: dict[str, Any],
    privacy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"dataset_id": dataset["id"], "kind": "statistics", "statistics": STATS}
    if privacy:
        spec["privacy"] = privacy
    job = submit(client, ds_token, spec)
    assert job.status_code == 201, job.get_json()
    approved = client.post(
        f"/data-centric/jobs/{job.get_json()['id']}/approve", json={}, headers=bearer(owner_token)
    )
    assert approved.status_code == 200, approved.get_json()
    body: dict[str, Any] = approved.get_json()
    return body


# ---- datasets ---------------------------------------------------------------------------------


def test_upload_records_schema_and_a_generated_mock(
    client: Any, owner_token: str, dataset: dict[str, Any]
) -> None:
    schema = dataset["schema"]
    assert schema["rows"] == 4
    columns = {c["name"]: c for c in schema["columns"]}
    assert (
        columns["age"]["dtype"] == "int64"
        and columns["age"]["min"] == 29
        and columns["age"]["max"] == 51
    )
    assert columns["city"]["categories"] == ["lyon", "nice", "paris"]
    assert dataset["tags"] == ["health", "tabular"] and dataset["mock_generated"] is True

    mock = client.get(dataset["mock_url"], headers=bearer(owner_token))
    assert mock.status_code == 200
    sample = load_safetensors(mock.data)
    assert set(sample) == {"age", "income", "city"}
    real = {(34, 52000.5), (51, 61000.25), (29, 38000.75), (45, 47000.0)}
    assert (
        not {(int(a), float(i)) for a, i in zip(sample["age"], sample["income"], strict=True)}
        & real
    )
    csv = client.get(dataset["mock_url"] + "?format=csv", headers=bearer(owner_token))
    assert csv.status_code == 200 and csv.data.startswith(b"age,income,city")


def test_owner_lists_updates_and_deletes(
    client: Any, owner_token: str, dataset: dict[str, Any]
) -> None:
    path = f"/data-centric/datasets/{dataset['id']}"
    patched = client.patch(
        path,
        json={"description": "new", "tags": ["Census"], "auto_release_epsilon": 1.0},
        headers=bearer(owner_token),
    )
    assert patched.status_code == 200, patched.get_json()
    assert (
        patched.get_json()["tags"] == ["census"]
        and patched.get_json()["auto_release_epsilon"] == 1.0
    )
    assert (
        client.get("/data-centric/datasets", headers=bearer(owner_token)).get_json()["datasets"][0][
            "description"
        ]
        == "new"
    )
    assert client.delete(path, headers=bearer(owner_token)).status_code == 204
    assert client.get(path, headers=bearer(owner_token)).status_code == 404


def test_search_by_tags_and_text(client: Any, owner_token: str, dataset: dict[str, Any]) -> None:
    other = upload(
        client,
        owner_token,
        npz_bytes(x=np.ones((3, 2), np.float32)),
        "x.npz",
        name="images",
        tags="vision",
    )
    assert other.status_code == 201, other.get_json()

    def names(query: str) -> list[str]:
        response = client.get(f"/data-centric/search?{query}", headers=bearer(owner_token))
        assert response.status_code == 200, response.get_json()
        return [d["name"] for d in response.get_json()["datasets"]]

    assert names("tags=health") == ["people"]
    assert names("tags=health,vision") == []
    assert names("q=CENSUS") == ["people"]
    assert names("") == ["people", "images"]
    assert (
        client.get("/data-centric/search?tags=bad%20tag!", headers=bearer(owner_token)).status_code
        == 422
    )
    assert (
        client.get("/data-centric/search?limit=3", headers=bearer(owner_token)).status_code == 422
    )


@pytest.mark.parametrize(
    ("data", "filename", "fields", "status", "words"),
    [
        (b"age,income\n34,1\n51\n", "bad.csv", {}, 422, "row"),
        (b"\xff\xfe\x00garbage", "bad.npz", {}, 422, ""),
        (
            CSV,
            "people.csv",
            {"schema": '{"columns": [{"name": "age"}, {"name": "salary"}]}'},
            422,
            "salary",
        ),
        (CSV, "people.csv", {"schema": "{not json"}, 422, "schema"),
        (CSV, "people.csv", {"target": "height"}, 422, "height"),
        (CSV, "people.csv", {"tags": "ok,not ok!"}, 422, "tag"),
        (CSV, "people.txt", {}, 422, "format"),
        (CSV, "people.csv", {"mock": (b"age,income\n1,2\n", "m.csv")}, 422, "mock"),
        (
            b"name,age\n" + b"".join(b"person%d,%d\n" % (i, i) for i in range(60)),
            "names.csv",
            {},
            422,
            "distinct text values",
        ),
    ],
)
def test_bad_uploads_are_refused_without_a_trace(
    client: Any,
    owner_token: str,
    data: bytes,
    filename: str,
    fields: dict[str, Any],
    status: int,
    words: str,
) -> None:
    response = upload(client, owner_token, data, filename, **fields)
    assert response.status_code == status, response.get_json()
    assert words.lower() in response.get_json()["error"].lower()
    assert _count(client, owner_token, "/data-centric/datasets", "datasets") == 0
    store = client.application.extensions["pygrid.blobs"]
    assert store.list("datasets/") == []


def test_duplicate_name_and_oversized_upload(
    client: Any, owner_token: str, dataset: dict[str, Any]
) -> None:
    assert upload(client, owner_token, CSV, "people.csv").status_code == 409
    client.application.config["MAX_CONTENT_LENGTH"] = 2048
    huge = upload(client, owner_token, b"a\n" + b"1\n" * 5000, "big.csv", name="big")
    assert huge.status_code == 413 and huge.get_json()["error"]
    assert _count(client, owner_token, "/data-centric/datasets", "datasets") == 1


def test_a_data_scientist_cannot_upload_change_or_delete(
    client: Any, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    _, token = scientist
    assert upload(client, token, CSV, "p.csv", name="mine").status_code == 403
    path = f"/data-centric/datasets/{dataset['id']}"
    assert client.patch(path, json={"description": "x"}, headers=bearer(token)).status_code == 403
    assert client.delete(path, headers=bearer(token)).status_code == 403
    assert client.get(path, headers=bearer(token)).get_json()["description"] == "census sample"


# ---- jobs and review ------------------------------------------------------------------------


def test_submit_review_and_states(
    client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    email, ds = scientist
    job = submit(
        client,
        ds,
        {
            "dataset_id": dataset["id"],
            "kind": "statistics",
            "statistics": STATS,
            "privacy": {"epsilon": 0.5},
        },
    )
    assert job.status_code == 201, job.get_json()
    body = job.get_json()
    assert (
        body["state"] == "pending_review"
        and body["epsilon"] == 0.5
        and body["requester_email"] == email
    )
    assert body["spec"]["statistics"]["columns"][0]["lower"] == 29.0  # defaults from the schema

    pending = client.get(
        "/data-centric/jobs?state=pending_review", headers=bearer(owner_token)
    ).get_json()["jobs"]
    assert [j["id"] for j in pending] == [body["id"]]
    path = f"/data-centric/jobs/{body['id']}"
    assert client.post(f"{path}/approve", json={}, headers=bearer(ds)).status_code == 403
    assert client.post(f"{path}/deny", json={}, headers=bearer(owner_token)).status_code == 422
    assert (
        client.post(
            f"{path}/approve", json={"reason": "fine"}, headers=bearer(owner_token)
        ).get_json()["state"]
        == "queued"
    )
    second = client.post(f"{path}/approve", json={}, headers=bearer(owner_token))
    assert second.status_code == 409 and "queued" in second.get_json()["error"]
    assert (
        client.post(
            f"{path}/deny", json={"reason": "late"}, headers=bearer(owner_token)
        ).status_code
        == 409
    )
    assert client.get(path, headers=bearer(ds)).get_json()["state"] == "queued"


def test_compliance_officer_triages_but_cannot_release(
    client: Any,
    owner_token: str,
    dataset: dict[str, Any],
    scientist: tuple[str, str],
    user_token: Callable[[Role], str],
) -> None:
    _, ds = scientist
    officer = user_token(Role.compliance_officer)
    job = submit(
        client, ds, {"dataset_id": dataset["id"], "kind": "statistics", "statistics": STATS}
    ).get_json()
    denied = client.post(
        f"/data-centric/jobs/{job['id']}/deny",
        json={"reason": "too broad"},
        headers=bearer(officer),
    )
    assert denied.status_code == 200 and denied.get_json()["state"] == "denied"
    assert (
        client.post(f"/data-centric/jobs/{job['id']}/release", headers=bearer(officer)).status_code
        == 403
    )
    assert client.get("/data-centric/audit", headers=bearer(officer)).status_code == 200
    assert client.get("/data-centric/audit", headers=bearer(ds)).status_code == 403


def test_scientists_see_only_their_own_jobs(
    client: Any,
    owner_token: str,
    dataset: dict[str, Any],
    scientist: tuple[str, str],
    user_token: Callable[[Role], str],
) -> None:
    _, ds = scientist
    other = user_token(Role.data_scientist)
    job = submit(
        client, ds, {"dataset_id": dataset["id"], "kind": "statistics", "statistics": STATS}
    ).get_json()
    assert _count(client, other, "/data-centric/jobs", "jobs") == 0
    assert client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(other)).status_code == 404
    assert (
        client.post(f"/data-centric/jobs/{job['id']}/cancel", headers=bearer(other)).status_code
        == 404
    )
    assert (
        client.post(f"/data-centric/jobs/{job['id']}/cancel", headers=bearer(ds)).get_json()[
            "state"
        ]
        == "cancelled"
    )


def _model_bytes(module: torch.nn.Module) -> bytes:
    import io

    from pygrid.plans import _jit_quiet

    buffer = io.BytesIO()
    with _jit_quiet():
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


class _Leaky(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        return x


@pytest.mark.parametrize(
    ("spec", "files", "status", "words"),
    [
        ({"dataset_id": 999, "kind": "statistics", "statistics": STATS}, {}, 404, "dataset"),
        ({"dataset_id": "{id}", "kind": "statistics"}, {}, 422, "statistics"),
        (
            {
                "dataset_id": "{id}",
                "kind": "statistics",
                "statistics": {"columns": [{"name": "nope", "stats": ["sum"]}]},
            },
            {},
            422,
            "nope",
        ),
        (
            {"dataset_id": "{id}", "kind": "statistics", "statistics": STATS, "surprise": 1},
            {},
            422,
            "surprise",
        ),
        (
            {"dataset_id": "{id}", "kind": "train", "target": "age"},
            {"model": "leaky"},
            422,
            "manual_seed",
        ),
        ({"dataset_id": "{id}", "kind": "train", "target": "age"}, {}, 422, "model"),
        ({"dataset_id": "{id}", "kind": "train"}, {"model": "linear"}, 422, "target"),
        (
            {"dataset_id": "{id}", "kind": "train", "target": "age", "privacy": {"epsilon": 1}},
            {"model": "linear"},
            422,
            "delta",
        ),
        (
            {"dataset_id": "{id}", "kind": "statistics", "statistics": STATS},
            {"model": "linear"},
            422,
            "no files",
        ),
    ],
)
def test_bad_jobs_are_refused_without_a_trace(
    client: Any,
    owner_token: str,
    dataset: dict[str, Any],
    scientist: tuple[str, str],
    spec: dict[str, Any],
    files: dict[str, str],
    status: int,
    words: str,
) -> None:
    _, ds = scientist
    if spec["dataset_id"] == "{id}":
        spec = {**spec, "dataset_id": dataset["id"]}
    models = {"leaky": _Leaky(), "linear": torch.nn.Linear(2, 1)}
    response = submit(
        client, ds, spec, **{name: _model_bytes(models[m]) for name, m in files.items()}
    )
    assert response.status_code == status, response.get_json()
    assert words in response.get_json()["error"] + str(response.get_json().get("detail")), (
        response.get_json()
    )
    assert _count(client, owner_token, "/data-centric/jobs", "jobs") == 0


def test_dp_training_cost_is_the_accountants_epsilon(
    client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    from pygrid.privacy import dpsgd

    _, ds = scientist
    spec = {
        "dataset_id": dataset["id"],
        "kind": "train",
        "features": ["income"],
        "target": "age",
        "train": {"epochs": 2, "batch_size": 2, "lr": 0.1, "loss": "mse"},
        "privacy": {"epsilon": 3.0, "delta": 1e-5},
    }
    job = submit(client, ds, spec, model=_model_bytes(torch.nn.Linear(1, 1)))
    assert job.status_code == 201, job.get_json()
    body = job.get_json()
    privacy = body["spec"]["privacy"]
    assert privacy["steps"] == 4 and privacy["sample_rate"] == 0.5
    expected = dpsgd.epsilon(privacy["noise_multiplier"], 0.5, 4, 1e-5)
    assert body["epsilon"] == pytest.approx(expected) and body["epsilon"] <= 3.0
    assert "aten::linear" in body["ops"]


# ---- the Worker protocol, release and budgets ------------------------------------------------


def test_worker_runs_a_job_and_the_owner_releases_it_within_budget(
    client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    email, ds = scientist
    job = _approved_stats_job(client, owner_token, ds, dataset, privacy={"epsilon": 1.0})
    token = worker_token(client, owner_token)

    claim = _claim(client, token)
    assert claim.status_code == 200, claim.get_json()
    lease = claim.get_json()
    assert lease["job_id"] == job["id"] and lease["schema"]["rows"] == 4 and lease["files"] == []
    assert _claim(client, token).status_code == 204  # nothing else queued
    base = f"/data-centric/worker/jobs/{job['id']}"
    data = client.get(f"{base}/data?lease_id={lease['lease_id']}", headers=bearer(token))
    assert load_safetensors(data.data)["age"].tolist() == [34, 51, 29, 45]
    assert (
        client.post(
            f"{base}/heartbeat", json={"lease_id": lease["lease_id"]}, headers=bearer(token)
        ).status_code
        == 200
    )
    assert (
        client.post(
            f"{base}/heartbeat", json={"lease_id": "not-mine"}, headers=bearer(token)
        ).status_code
        == 409
    )

    done = report(client, token, job["id"], lease["lease_id"], _stats_result(), {"rows": 4})
    assert done.status_code == 200 and done.get_json()["state"] == "finished", done.get_json()
    path = f"/data-centric/jobs/{job['id']}"
    seen = client.get(path, headers=bearer(ds)).get_json()
    assert seen["metrics"] is None and seen["result_available"] is False
    refused = client.get(f"{path}/result", headers=bearer(ds))
    assert refused.status_code == 403 and "sign-off" in refused.get_json()["error"]

    # no budget yet: withheld with the numbers, nothing charged
    withheld = client.post(f"{path}/release", headers=bearer(owner_token))
    assert withheld.status_code == 409 and "budget" in withheld.get_json()["error"]
    assert client.get(path, headers=bearer(ds)).get_json()["state"] == "finished"
    budget = client.put(
        "/data-centric/budgets",
        json={"dataset_id": dataset["id"], "user_email": email, "epsilon": 1.5},
        headers=bearer(owner_token),
    )
    assert budget.status_code == 200 and budget.get_json()["epsilon_spent"] == 0

    released = client.post(f"{path}/release", headers=bearer(owner_token))
    assert released.status_code == 200 and released.get_json()["state"] == "released"
    assert client.post(f"{path}/release", headers=bearer(owner_token)).status_code == 409
    budgets = client.get("/data-centric/budgets", headers=bearer(ds)).get_json()["budgets"]
    assert budgets[0]["epsilon_spent"] == 1.0 and budgets[0]["epsilon_remaining"] == 0.5
    result = client.get(f"{path}/result", headers=bearer(ds))
    assert result.status_code == 200 and load_safetensors(result.data)["age.sum"].tolist() == [
        159.0
    ]
    assert client.get(path, headers=bearer(ds)).get_json()["metrics"] == {"rows": 4.0}

    # the next result would exceed what is left: withheld, not charged
    second = _approved_stats_job(client, owner_token, ds, dataset, privacy={"epsilon": 1.0})
    lease2 = _claim(client, token).get_json()
    report(client, token, second["id"], lease2["lease_id"], _stats_result())
    over = client.post(f"/data-centric/jobs/{second['id']}/release", headers=bearer(owner_token))
    assert over.status_code == 409 and over.get_json()["detail"]["epsilon_spent"] == 1.0
    assert client.get(f"/data-centric/jobs/{second['id']}", headers=bearer(ds)).get_json()[
        "withheld_reason"
    ]
    assert (
        client.get("/data-centric/budgets", headers=bearer(ds)).get_json()["budgets"][0][
            "epsilon_spent"
        ]
        == 1.0
    )

    actions = [
        e["action"]
        for e in client.get(
            f"/data-centric/audit?job_id={job['id']}", headers=bearer(owner_token)
        ).get_json()["events"]
    ]
    assert actions == [
        "job.download",
        "job.release",
        "job.withhold",
        "job.finish",
        "job.claim",
        "job.approve",
        "job.submit",
    ]


def test_auto_release_rule(
    client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    email, ds = scientist
    client.patch(
        f"/data-centric/datasets/{dataset['id']}",
        json={"auto_release_epsilon": 0.5},
        headers=bearer(owner_token),
    )
    client.put(
        "/data-centric/budgets",
        json={"dataset_id": dataset["id"], "user_email": email, "epsilon": 5},
        headers=bearer(owner_token),
    )
    token = worker_token(client, owner_token)
    small = _approved_stats_job(client, owner_token, ds, dataset, privacy={"epsilon": 0.5})
    big = _approved_stats_job(client, owner_token, ds, dataset, privacy={"epsilon": 2.0})
    for job in (small, big):
        lease = _claim(client, token).get_json()
        assert (
            report(client, token, job["id"], lease["lease_id"], _stats_result()).status_code == 200
        )
    assert (
        client.get(f"/data-centric/jobs/{small['id']}", headers=bearer(ds)).get_json()["state"]
        == "released"
    )
    assert (
        client.get(f"/data-centric/jobs/{big['id']}", headers=bearer(ds)).get_json()["state"]
        == "finished"
    )
    assert (
        client.get("/data-centric/budgets", headers=bearer(ds)).get_json()["budgets"][0][
            "epsilon_spent"
        ]
        == 0.5
    )


def _expire_lease(app: Any, job_id: int) -> None:
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from pygrid.db.models import Job, utcnow

    with Session(app.extensions["pygrid.db"].engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


def test_an_expired_lease_requeues_and_the_late_result_is_refused(
    app: Any, client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    _, ds = scientist
    job = _approved_stats_job(client, owner_token, ds, dataset)
    lost, other = (
        worker_token(client, owner_token, "lost"),
        worker_token(client, owner_token, "other"),
    )
    first = _claim(client, lost).get_json()
    _expire_lease(app, job["id"])
    base = f"/data-centric/worker/jobs/{job['id']}"
    assert (
        client.post(
            f"{base}/heartbeat", json={"lease_id": first["lease_id"]}, headers=bearer(lost)
        ).status_code
        == 409
    )
    assert (
        client.get(f"{base}/data?lease_id={first['lease_id']}", headers=bearer(lost)).status_code
        == 409
    )

    second = _claim(client, other).get_json()
    assert second["job_id"] == job["id"] and second["lease_id"] != first["lease_id"]
    late = report(client, lost, job["id"], first["lease_id"], _stats_result())
    assert late.status_code == 409 and late.get_json()["error"]
    assert (
        client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(owner_token)).get_json()[
            "state"
        ]
        == "running"
    )
    assert report(client, other, job["id"], second["lease_id"], _stats_result()).status_code == 200
    body = client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(owner_token)).get_json()
    assert body["state"] == "finished" and body["attempts"] == 2
    assert client.application.extensions["pygrid.blobs"].list(f"jobs/{job['id']}/") == [
        f"jobs/{job['id']}/result-{second['lease_id']}.safetensors"
    ]


def test_a_job_that_loses_its_worker_three_times_fails(
    app: Any, client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    _, ds = scientist
    job = _approved_stats_job(client, owner_token, ds, dataset)
    token = worker_token(client, owner_token)
    for _ in range(3):
        assert _claim(client, token).status_code == 200
        _expire_lease(app, job["id"])
    assert _claim(client, token).status_code == 204
    body = client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(owner_token)).get_json()
    assert body["state"] == "failed" and "lost its Worker" in body["error"]
    assert (
        client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(ds)).get_json()["error"]
        is None
    )


def test_failure_report_is_for_reviewers_only(
    client: Any, owner_token: str, dataset: dict[str, Any], scientist: tuple[str, str]
) -> None:
    _, ds = scientist
    job = _approved_stats_job(client, owner_token, ds, dataset)
    token = worker_token(client, owner_token)
    lease = _claim(client, token).get_json()
    failed = client.post(
        f"/data-centric/worker/jobs/{job['id']}/fail",
        json={"lease_id": lease["lease_id"], "error": "value 34 is odd"},
        headers=bearer(token),
    )
    assert failed.status_code == 200 and failed.get_json()["state"] == "failed"
    assert (
        client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(owner_token)).get_json()[
            "error"
        ]
        == "value 34 is odd"
    )
    assert (
        client.get(f"/data-centric/jobs/{job['id']}", headers=bearer(ds)).get_json()["error"]
        is None
    )


def test_worker_tokens_forged_expired_revoked_or_user(
    app: Any, client: Any, owner_token: str, dataset: dict[str, Any]
) -> None:
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from pygrid.db.models import WorkerToken, utcnow

    token = worker_token(client, owner_token)
    token_id = int(token.split("_")[1])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, owner_token, "pgw_999_" + "x" * 43):
        response = _claim(client, bad)
        assert response.status_code == 401 and response.get_json()["error"], bad
    with Session(app.extensions["pygrid.db"].engine) as session:
        session.execute(
            update(WorkerToken)
            .where(WorkerToken.id == token_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    assert "expired" in _claim(client, token).get_json()["error"]
    fresh = worker_token(client, owner_token, "fresh")
    assert _claim(client, fresh).status_code == 204
    listed = client.get("/data-centric/worker-tokens", headers=bearer(owner_token)).get_json()[
        "tokens"
    ]
    assert {t["name"] for t in listed} == {"w", "fresh"} and "token" not in listed[0]
    assert (
        client.delete(
            f"/data-centric/worker-tokens/{int(fresh.split('_')[1])}", headers=bearer(owner_token)
        ).status_code
        == 204
    )
    assert "revoked" in _claim(client, fresh).get_json()["error"]
    # a worker token is not a user token either
    assert client.get("/data-centric/datasets", headers=bearer(fresh)).status_code == 401


def test_a_data_scientist_never_receives_private_rows(
    app: Any, client: Any, owner_token: str, scientist: tuple[str, str]
) -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-1000, 1000, size=(50, 4)).astype(np.float32)
    x[0], x[1] = -2000, 2000  # the published range comes from these two rows; the rest are private
    dataset = upload(
        client,
        owner_token,
        npz_bytes(x=x, y=np.arange(50) % 3),
        "d.npz",
        name="secret",
        tags="private",
    ).get_json()
    email, ds = scientist
    submitted = submit(
        client,
        ds,
        {
            "dataset_id": dataset["id"],
            "kind": "statistics",
            "statistics": {"columns": [{"name": "y", "stats": ["count"]}]},
        },
    ).get_json()

    bodies = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()):
            continue
        path = rule.rule
        for arg in rule.arguments:
            value = {
                "dataset_id": dataset["id"],
                "job_id": submitted["id"],
                "token_id": 1,
                "name": "model",
            }.get(arg, "x")
            path = path.replace(f"<int:{arg}>", str(value)).replace(f"<{arg}>", str(value))
        for suffix in ("", "?lease_id=x", "?format=csv"):
            bodies.append(client.get(path + suffix, headers=bearer(ds)).data)
    assert len(bodies) > 20
    everything = b"".join(bodies)
    for row in x[2:]:
        assert row.tobytes() not in everything
        assert f"{row[0]:.2f}".encode() not in everything
