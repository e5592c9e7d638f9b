"""Helpers for tests that act as users over HTTP."""

from __future__ import annotations

from typing import Any

PASSWORD = "a-long-test-password"


def login(client: Any, email: str, password: str = PASSWORD) -> str:
    """Log in through ``POST /users/login`` and return the bearer token."""
    response = client.post("/users/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}
