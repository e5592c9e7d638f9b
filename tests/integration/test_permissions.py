"""Every mutating route, as every role and with every kind of bad token.

The routes come from the app's URL map, so a route added later is covered without editing this
file: it must declare a permission, and each role is refused or let through accordingly.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from pygrid.auth.roles import Role, has_permission
from pygrid.auth.tokens import ALGORITHM, USER_AUDIENCE
from pygrid.server.dashboard import PageSpec
from pygrid.server.endpoint import MUTATING_METHODS, route_spec
from tests.support.users import PASSWORD, bearer

# Routes no user token guards (Worker routes take worker tokens instead, and every role's user
# token is refused there with 401). Logging in is open; the device side of model-centric FL is
# authorised by the device token, worker_id and request_key the protocol hands out, and
# test_model_centric.py proves each of those is checked.
PUBLIC_MUTATING = {
    ("POST", "/users/login"),
    ("POST", "/model-centric/authenticate"),
    ("POST", "/model-centric/speed-test"),
    ("POST", "/model-centric/cycle-request"),
    ("POST", "/model-centric/report"),
    # A Node joins with the join token in its body and then speaks with the credential the
    # Network issued it; no user is involved. test_network_registry.py proves each is checked.
    ("POST", "/registry/join"),
    ("POST", "/registry/heartbeat"),
    ("POST", "/registry/leave"),
    # The Network forwards /nodes/<id>/<path> to the Node as it came, Authorization included;
    # the Node alone judges it (the Network holds none of its users). test_routing.py covers it.
    *((method, "/nodes/nothing/nothing") for method in ("POST", "PUT", "PATCH", "DELETE")),
}

# Dashboard forms (pygrid.server.dashboard) take the session cookie and a CSRF token instead of a
# bearer token: logging in and out is open; every other form declares a permission (PageSpec).
DASHBOARD_PUBLIC_MUTATING = {("POST", "/dashboard/login"), ("POST", "/dashboard/logout")}


def mutating_routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, concrete path, spec) for each mutating route; path arguments point at nothing."""
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) & MUTATING_METHODS):
            spec = route_spec(app.view_functions[rule.endpoint])
            path = re.sub(r"<int:\w+>", "999999", rule.rule)
            path = re.sub(r"<(\w+:)?\w+>", "nothing", path)
            found.append((method, path, spec))
    return found


def test_every_mutating_route_declares_a_permission(app: Any) -> None:
    routes = mutating_routes(app)
    assert routes, "no mutating routes found"
    for method, path, spec in routes:
        assert spec is not None, f"{method} {path} is not declared with @endpoint"
        if (method, path) in PUBLIC_MUTATING or (method, path) in DASHBOARD_PUBLIC_MUTATING:
            assert spec.public
        elif spec.worker:
            # Worker routes take worker tokens, not roles: test_data_centric.py checks them
            assert path.startswith("/data-centric/worker/"), path
        else:
            assert spec.permission is not None, f"{method} {path} declares no permission"


@pytest.mark.parametrize("role", list(Role))
def test_each_role_is_refused_exactly_where_it_lacks_the_permission(
    app: Any, client: Any, owner_token: str, user_token: Callable[[Role], str], role: Role
) -> None:
    token = owner_token if role is Role.owner else user_token(role)
    before = client.get("/users", headers=bearer(owner_token)).get_json()
    for method, path, spec in mutating_routes(app):
        if spec.public:
            continue
        response = client.open(path, method=method, json={}, headers=bearer(token))
        if isinstance(spec, PageSpec):
            # a bearer token opens no dashboard form: off to the log-in page
            assert response.status_code == 303, (method, path, role)
            assert response.location.startswith("/dashboard/login"), (method, path, role)
            continue
        body = response.get_json()
        if spec.worker:
            assert response.status_code == 401, (method, path, role, body)
            continue
        refused = response.status_code == 403 and "permission" in body["error"]
        assert refused is not has_permission(role, spec.permission), (method, path, role, body)
    assert client.get("/users", headers=bearer(owner_token)).get_json() == before


def _b64(part: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _bad_tokens(app: Any) -> dict[str, str | None]:
    secret = app.config["SECRET_KEY"]
    now = int(time.time())
    issuer = app.extensions["pygrid.auth"].issuer
    claims = {
        "sub": "1",
        "role": "owner",
        "ver": 0,
        "iss": issuer,
        "aud": USER_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    return {
        "missing": None,
        "expired": jwt.encode(
            {**claims, "exp": now - 600, "iat": now - 1200, "nbf": now - 1200},
            secret,
            algorithm=ALGORITHM,
        ),
        "forged": jwt.encode(claims, "f" * 48, algorithm=ALGORITHM),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "other server": jwt.encode(
            {**claims, "iss": "pygrid:node:elsewhere"}, secret, algorithm=ALGORITHM
        ),
        "unknown user": jwt.encode({**claims, "sub": "4242"}, secret, algorithm=ALGORITHM),
    }


@pytest.mark.parametrize(
    "kind", ["missing", "expired", "forged", "alg none", "other server", "unknown user"]
)
def test_bad_tokens_get_401_on_every_protected_route(
    app: Any, client: Any, owner_token: str, kind: str
) -> None:
    token = _bad_tokens(app)[kind]
    headers = bearer(token) if token else {}
    before = client.get("/users", headers=bearer(owner_token)).get_json()
    for method, path, spec in mutating_routes(app) + [
        ("GET", "/users", None),
        ("GET", "/users/me", None),
    ]:
        if spec is not None and (spec.public or isinstance(spec, PageSpec)):
            continue
        response = client.open(path, method=method, json={}, headers=headers)
        assert response.status_code == 401, (kind, method, path, response.get_json())
        assert response.get_json()["error"]
    assert client.get("/users", headers=bearer(owner_token)).get_json() == before


def _dashboard_login(client: Any, email: str) -> str:
    """Log in through the dashboard's form; the session's CSRF token."""
    client.get("/dashboard/login")
    with client.session_transaction() as session:
        token = session["csrf"]
    form = {"csrf_token": token, "email": email, "password": PASSWORD}
    assert client.post("/dashboard/login", data=form).status_code == 303
    with client.session_transaction() as session:
        fresh: str = session["csrf"]
    return fresh


@pytest.mark.parametrize("role", list(Role))
def test_each_role_is_refused_exactly_where_it_lacks_the_permission_on_dashboard_forms(
    app: Any, client: Any, owner_token: str, role: Role
) -> None:
    from sqlalchemy.orm import Session

    from pygrid import users

    email = "owner@example.org"
    if role is not Role.owner:
        email = f"{role}-dashboard@example.org"
        with Session(app.extensions["pygrid.db"].engine) as session:
            users.create_user(session, email, PASSWORD, role)
    csrf = _dashboard_login(client, email)
    before = client.get("/users", headers=bearer(owner_token)).get_json()
    forms = [(m, p, s) for m, p, s in mutating_routes(app) if isinstance(s, PageSpec)]
    assert forms, "no dashboard forms found"
    for method, path, spec in forms:
        if spec.public:
            continue
        # the CSRF token is checked first, for every role
        assert client.open(path, method=method, data={}).status_code == 400, (path, role)
        response = client.open(path, method=method, data={"csrf_token": csrf})
        refused = response.status_code == 403 and b"permission" in response.data
        assert refused is not has_permission(role, spec.permission), (method, path, role)
    assert client.get("/users", headers=bearer(owner_token)).get_json() == before
