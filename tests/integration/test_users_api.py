"""The users story over HTTP on Node and Network, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pygrid.auth.roles import Role
from tests.support.users import PASSWORD, bearer, login


def test_owner_logs_in_and_sees_themselves(client: Any, owner_token: str) -> None:
    response = client.get("/users/me", headers=bearer(owner_token))
    assert response.status_code == 200
    assert response.get_json()["role"] == "owner"
    assert "password_hash" not in response.get_json()


def test_wrong_password_and_unknown_user_get_the_same_answer(client: Any) -> None:
    wrong = client.post("/users/login", json={"email": "owner@example.org", "password": "x" * 14})
    unknown = client.post(
        "/users/login", json={"email": "nobody@example.org", "password": "x" * 14}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.get_json()
        == unknown.get_json()
        == {"error": "wrong email or password", "detail": None}
    )


def test_owner_creates_lists_changes_and_deletes_a_user(client: Any, owner_token: str) -> None:
    # Prepare
    headers = bearer(owner_token)
    new = {
        "email": "Ada@Example.org ",
        "password": PASSWORD,
        "role": "data_scientist",
        "name": "Ada",
    }
    # Execute
    created = client.post("/users", json=new, headers=headers)
    user_id = created.get_json()["id"]
    listed = client.get("/users", headers=headers).get_json()["users"]
    promoted = client.patch(f"/users/{user_id}", json={"role": "admin"}, headers=headers)
    deleted = client.delete(f"/users/{user_id}", headers=headers)
    # Assert
    assert created.status_code == 201
    assert created.get_json()["email"] == "ada@example.org"
    assert [u["email"] for u in listed] == ["owner@example.org", "ada@example.org"]
    assert promoted.status_code == 200 and promoted.get_json()["role"] == "admin"
    assert deleted.status_code == 204
    assert client.get(f"/users/{user_id}", headers=headers).status_code == 404


def test_duplicate_email_is_a_conflict(client: Any, owner_token: str) -> None:
    body = {"email": "dup@example.org", "password": PASSWORD, "role": "data_scientist"}
    assert client.post("/users", json=body, headers=bearer(owner_token)).status_code == 201
    again = client.post(
        "/users", json={**body, "email": "DUP@example.org"}, headers=bearer(owner_token)
    )
    assert again.status_code == 409
    assert len(client.get("/users", headers=bearer(owner_token)).get_json()["users"]) == 2


def test_weak_password_is_refused_and_nothing_created(client: Any, owner_token: str) -> None:
    body = {"email": "weak@example.org", "password": "short", "role": "data_scientist"}
    response = client.post("/users", json=body, headers=bearer(owner_token))
    assert response.status_code == 422
    assert "at least 12" in response.get_json()["error"]
    assert len(client.get("/users", headers=bearer(owner_token)).get_json()["users"]) == 1


@pytest.mark.parametrize(
    ("actor", "change", "target_role"),
    [
        (Role.admin, {"role": "owner"}, "self"),
        (Role.admin, {"role": "admin"}, Role.data_scientist),
        (Role.admin, {"name": "x"}, Role.admin),
        (Role.owner, {"role": "owner"}, Role.admin),
    ],
)
def test_nobody_raises_a_role_to_their_own_rank_or_above(
    client: Any,
    owner_token: str,
    user_token: Callable[[Role], str],
    actor: Role,
    change: dict[str, str],
    target_role: Role | str,
) -> None:
    token = owner_token if actor is Role.owner else user_token(actor)
    me = client.get("/users/me", headers=bearer(token)).get_json()
    if target_role == "self":
        target_id = me["id"]
    else:
        target_id = client.get(
            "/users/me", headers=bearer(user_token(Role(target_role)))
        ).get_json()["id"]
    before = client.get(f"/users/{target_id}", headers=bearer(owner_token)).get_json()
    response = client.patch(f"/users/{target_id}", json=change, headers=bearer(token))
    assert response.status_code == 403
    assert client.get(f"/users/{target_id}", headers=bearer(owner_token)).get_json() == before


def test_own_role_is_not_part_of_the_profile(
    client: Any, user_token: Callable[[Role], str]
) -> None:
    token = user_token(Role.data_scientist)
    response = client.patch("/users/me", json={"role": "owner"}, headers=bearer(token))
    assert response.status_code == 422
    assert response.get_json()["detail"][0]["loc"] == "role"
    assert client.get("/users/me", headers=bearer(token)).get_json()["role"] == "data_scientist"


def test_changing_password_needs_the_current_one_and_revokes_old_tokens(
    client: Any, owner_token: str
) -> None:
    headers = bearer(owner_token)
    refused = client.patch("/users/me", json={"password": "a-brand-new-password"}, headers=headers)
    assert refused.status_code == 422
    changed = client.patch(
        "/users/me",
        json={"password": "a-brand-new-password", "current_password": PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200
    assert client.get("/users/me", headers=headers).status_code == 401
    assert login(client, "owner@example.org", "a-brand-new-password")


def test_demoted_users_token_stops_working(
    client: Any, owner_token: str, user_token: Callable[[Role], str]
) -> None:
    admin = user_token(Role.admin)
    admin_id = client.get("/users/me", headers=bearer(admin)).get_json()["id"]
    demote = client.patch(
        f"/users/{admin_id}", json={"role": "data_scientist"}, headers=bearer(owner_token)
    )
    assert demote.status_code == 200
    assert client.get("/users", headers=bearer(admin)).status_code == 401


def test_owner_cannot_be_deleted_by_anyone(
    client: Any, owner_token: str, user_token: Callable[[Role], str]
) -> None:
    owner_id = client.get("/users/me", headers=bearer(owner_token)).get_json()["id"]
    assert client.delete(f"/users/{owner_id}", headers=bearer(owner_token)).status_code == 403
    assert (
        client.delete(f"/users/{owner_id}", headers=bearer(user_token(Role.admin))).status_code
        == 403
    )
    assert client.get("/users/me", headers=bearer(owner_token)).status_code == 200
