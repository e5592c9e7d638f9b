"""What every client can rely on: JSON errors, size limits, /status, /openapi.json, /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.support.users import bearer


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
        (
            {"data": "email=a", "content_type": "application/x-www-form-urlencoded"},
            415,
            "application/json",
        ),
        ({"json": {"email": "a@b.c", "password": "x", "extra": 1}}, 422, "extra"),
        ({"json": {"email": "a@b.c"}}, 422, "password"),
        ({"json": ["a", "list"]}, 422, "invalid body"),
        ({"json": {"email": "no-at-sign", "password": "x"}}, 422, "email"),
    ],
)
def test_bad_login_bodies_get_a_json_4xx(
    client: Any, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/users/login", **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error", "detail"}
    assert message in (body["error"] + str(body["detail"]))


def test_oversized_body_is_refused_before_reading(app: Any, client: Any) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 1024
    response = client.post("/users/login", data="x" * 4096, content_type="application/json")
    assert response.status_code == 413
    assert response.is_json and response.get_json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("PUT", "/status", 405)]
)
def test_routing_errors_are_json(client: Any, method: str, path: str, status: int) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json and set(response.get_json()) == {"error", "detail"}


def test_unexpected_errors_are_json_without_a_traceback(app: Any) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_url_rule("/explode", view_func=explode)
    response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error", "detail": None}
    assert b"Traceback" not in response.data and b"secret internals" not in response.data


def test_status_says_who_and_how_healthy(client: Any, settings: Any) -> None:
    body = client.get("/status").get_json()
    assert body["id"] == "test" and body["app"] == settings.app
    assert body["database"]["reachable"] and body["blob_store"]["reachable"]
    assert body["database"]["backend"] in {"sqlite", "postgresql"}
    assert body["uptime_seconds"] >= 0


def test_status_is_503_when_the_database_is_gone(app: Any, client: Any) -> None:
    from sqlalchemy import create_engine

    database = app.extensions["pygrid.db"]
    working, database.engine = (
        database.engine,
        create_engine("postgresql+psycopg://u@127.0.0.1:1/none"),
    )
    try:
        response = client.get("/status")
    finally:
        database.engine.dispose()
        database.engine = working
    assert response.status_code == 503
    assert response.get_json()["database"]["reachable"] is False


def test_openapi_is_valid_and_covers_every_route(app: Any, client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = (
            rule.rule.replace("<int:", "{")
            .replace("<path:", "{")
            .replace(">", "}")
            .replace("<", "{")
        )
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented
    create = spec["paths"]["/users"]["post"]
    assert create["x-permission"] == "manage_users"
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    new_user = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert new_user["additionalProperties"] is False
    assert set(new_user["required"]) == {"email", "password", "role"}


def test_metrics_count_requests(client: Any, owner_token: str) -> None:
    client.get("/users/me", headers=bearer(owner_token))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pygrid_http_requests_total{endpoint="users.me",method="GET",status="200"} 1.0' in text
    assert "pygrid_http_request_seconds_bucket" in text
