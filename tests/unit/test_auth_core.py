"""Roles, password hashing and user tokens: pure functions, no server."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from pygrid.auth.passwords import hash_password, password_problem, verify_password
from pygrid.auth.roles import ROLE_PERMISSIONS, Permission, Role, can_grant, has_permission
from pygrid.auth.tokens import ALGORITHM, USER_AUDIENCE, TokenError, decode_token, issue_token

SECRET = "s" * 64
ISSUER = "pygrid:node:test"


def test_password_round_trip_and_mismatch() -> None:
    # Prepare
    stored = hash_password("correct horse battery")
    # Execute / Assert
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "correct horse batterY")
    assert not verify_password(None, "anything at all")
    assert not verify_password("not-a-hash", "anything at all")


@pytest.mark.parametrize(
    ("password", "problem"),
    [("short", "at least 12"), (" padded password ", "white space"), ("long enough pass", None)],
)
def test_password_rules(password: str, problem: str | None) -> None:
    result = password_problem(password)
    assert (result is None) if problem is None else (problem in (result or ""))


def test_token_round_trip() -> None:
    token, expires_at = issue_token(SECRET, ISSUER, 7, "admin", 3, ttl_seconds=60)
    claims = decode_token(SECRET, ISSUER, token)
    assert (claims.user_id, claims.role, claims.version) == (7, "admin", 3)
    assert expires_at == claims.expires_at
    assert 55 <= expires_at - time.time() <= 61


def _b64(part: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "1",
        "role": "owner",
        "ver": 0,
        "iss": ISSUER,
        "aud": USER_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    claims.update(changes)
    return claims


def bad_tokens() -> dict[str, str]:
    """Made when a test runs, not at import: a long suite must not expire them early."""
    return {
        "expired": jwt.encode(_claims(exp=int(time.time()) - 3600), SECRET, algorithm=ALGORITHM),
        "forged": jwt.encode(_claims(), "x" * 48, algorithm=ALGORITHM),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        "other issuer": jwt.encode(_claims(iss="pygrid:node:other"), SECRET, algorithm=ALGORITHM),
        "other audience": jwt.encode(_claims(aud="device"), SECRET, algorithm=ALGORITHM),
        "HS512": jwt.encode(_claims(), SECRET, algorithm="HS512"),
        "no exp": jwt.encode(
            {k: v for k, v in _claims().items() if k != "exp"}, SECRET, algorithm=ALGORITHM
        ),
        "garbage": "not.a.token",
    }


BAD_KINDS = [
    "expired",
    "forged",
    "alg none",
    "other issuer",
    "other audience",
    "HS512",
    "no exp",
    "garbage",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_tokens_are_refused(kind: str) -> None:
    with pytest.raises(TokenError) as excinfo:
        decode_token(SECRET, ISSUER, bad_tokens()[kind])
    assert ("expired" in str(excinfo.value)) == (kind == "expired")


def test_every_role_has_its_permissions_and_only_owner_admin_manage_users() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
    managers = {role for role in Role if has_permission(role, Permission.manage_users)}
    assert managers == {Role.owner, Role.admin}
    assert all(has_permission(role, Permission.edit_own_profile) for role in Role)


@pytest.mark.parametrize(
    ("granter", "role", "allowed"),
    [
        (Role.owner, Role.admin, True),
        (Role.owner, Role.owner, False),
        (Role.admin, Role.admin, False),
        (Role.admin, Role.data_scientist, True),
        (Role.admin, Role.compliance_officer, True),
        (Role.compliance_officer, Role.data_scientist, True),
        (Role.data_scientist, Role.data_scientist, False),
    ],
)
def test_a_role_grants_only_roles_below_it(granter: Role, role: Role, allowed: bool) -> None:
    assert can_grant(granter, role) is allowed
