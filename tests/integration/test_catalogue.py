"""``GET /catalogue`` and ``node_catalogue``: what a Node publishes to its Network, and only that."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from pygrid.db.models import AuditEvent, FLProcess, Job, WorkerToken, utcnow
from pygrid.network.catalogue import node_catalogue
from tests.support.data_centric import npz_bytes, upload
from tests.support.users import bearer

CSV = b"age,income,city\n34,52000.5,paris\n51,61000.25,lyon\n29,38000.75,paris\n"


@pytest.fixture
def app_kind() -> str:
    """The catalogue is a Node's."""
    return "node"


@pytest.fixture
def published(client: Any, owner_token: str) -> list[dict[str, Any]]:
    """Two datasets: people (health, tabular; CSV) and digits (vision; NPZ with a 2-D column)."""
    people = upload(
        client, owner_token, CSV, "people.csv", description="census sample", tags="health,tabular"
    )
    assert people.status_code == 201, people.get_json()
    pixels = np.zeros((5, 8, 8), dtype=np.float32)
    labels = np.arange(5, dtype=np.int64)
    digits = upload(
        client,
        owner_token,
        npz_bytes(pixels=pixels, label=labels),
        "digits.npz",
        name="digits",
        description="Handwritten digits",
        tags="vision",
    )
    assert digits.status_code == 201, digits.get_json()
    return [people.get_json(), digits.get_json()]


def _session(app: Any) -> Session:
    return Session(app.extensions["pygrid.db"].engine)


def _audit_count(app: Any) -> int:
    with _session(app) as session:
        return session.query(AuditEvent).count()


def test_catalogue_publishes_metadata_processes_and_load(
    app: Any, client: Any, published: list[dict[str, Any]]
) -> None:
    with _session(app) as session:
        session.add(
            FLProcess(
                name="mnist",
                version="1.0",
                client_config={},
                server_config={},
                model_spec=[],
                cycles_done=3,
            )
        )
        session.commit()

    response = client.get("/catalogue")

    assert response.status_code == 200
    body = response.get_json()
    assert body["node_id"] == "test"
    people, digits = body["datasets"]
    assert people == {
        "id": published[0]["id"],
        "name": "people",
        "description": "census sample",
        "tags": ["health", "tabular"],
        "rows": 3,
        "columns": [
            {"name": "age", "dtype": "int64", "shape": []},
            {"name": "income", "dtype": "float32", "shape": []},
            {"name": "city", "dtype": "int64", "shape": []},
        ],
        "mock_url": f"/data-centric/datasets/{published[0]['id']}/mock",
    }
    assert digits["rows"] == 5
    assert {"name": "pixels", "dtype": "float32", "shape": [8, 8]} in digits["columns"]
    assert body["processes"] == [
        {"name": "mnist", "version": "1.0", "state": "running", "cycles_done": 3}
    ]
    assert body["load"] == {"queued_jobs": 0, "running_jobs": 0, "workers_seen": 0}


def test_catalogue_never_shows_rows_or_private_fields(
    client: Any, published: list[dict[str, Any]]
) -> None:
    text = client.get("/catalogue").get_data(as_text=True)

    for private in ("52000.5", "lyon", "blob_key", "owner_id", "categories", "size_bytes"):
        assert private not in text


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", ["people", "digits"]),
        ("?tags=health", ["people"]),
        ("?tags=Health,%20tabular", ["people"]),
        ("?tags=health,vision", []),
        ("?q=DIGITS", ["digits"]),
        ("?q=census", ["people"]),
        ("?q=tabular", ["people"]),
        ("?tags=vision&q=hand", ["digits"]),
        ("?q=nothing-like-it", []),
    ],
)
def test_catalogue_filters_like_search(
    client: Any, owner_token: str, published: list[dict[str, Any]], query: str, names: list[str]
) -> None:
    catalogue = client.get(f"/catalogue{query}")
    search = client.get(f"/data-centric/search{query}", headers=bearer(owner_token))

    assert catalogue.status_code == 200
    assert [d["name"] for d in catalogue.get_json()["datasets"]] == names
    assert [d["name"] for d in search.get_json()["datasets"]] == names


def test_catalogue_is_public_and_writes_no_audit_event(
    app: Any, client: Any, published: list[dict[str, Any]]
) -> None:
    before = _audit_count(app)

    response = client.get("/catalogue?tags=health&q=census")

    assert response.status_code == 200
    assert _audit_count(app) == before


@pytest.mark.parametrize(
    "query",
    ["?tags=Not%20A%20Tag!", "?unknown=1", f"?q={'x' * 201}", f"?tags={'a,' * 1001}"],
)
def test_malformed_catalogue_queries_get_422(client: Any, query: str) -> None:
    response = client.get(f"/catalogue{query}")

    assert response.status_code == 422
    assert set(response.get_json()) == {"error", "detail"}


def test_load_counts_queued_and_running_jobs_and_recent_workers(app: Any) -> None:
    now = utcnow()
    with _session(app) as session:
        for state in ("queued", "queued", "running", "finished", "pending_review"):
            session.add(
                Job(dataset_name="d", kind="statistics", state=state, spec={}, files={}, ops=[])
            )
        session.add_all(
            [
                WorkerToken(name="recent", secret_hash="a" * 64, last_seen=now),
                WorkerToken(
                    name="long-gone", secret_hash="b" * 64, last_seen=now - timedelta(hours=1)
                ),
                WorkerToken(name="never", secret_hash="c" * 64),
                WorkerToken(name="revoked", secret_hash="d" * 64, last_seen=now, revoked_at=now),
            ]
        )
        session.commit()

        catalogue = node_catalogue(session, "alice")

    assert catalogue["node_id"] == "alice"
    assert catalogue["load"] == {"queued_jobs": 2, "running_jobs": 1, "workers_seen": 1}


def test_node_catalogue_takes_tags_as_a_list_too(app: Any, published: list[dict[str, Any]]) -> None:
    with _session(app) as session:
        found = node_catalogue(session, "alice", ["tabular", "health"], "CENSUS")

    assert [d["name"] for d in found["datasets"]] == ["people"]
