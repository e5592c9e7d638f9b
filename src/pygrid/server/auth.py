"""The Flask extension that turns a bearer token into the current user."""

from __future__ import annotations

from flask import Flask

from pygrid.auth.tokens import TokenError, decode_token
from pygrid.db.models import User, WorkerToken
from pygrid.errors import Unauthorized
from pygrid.server.database import db_session
from pygrid.server.endpoint import bearer_token


class Auth:
    """Checks user tokens against this server's secret and issuer (``init_app`` style)."""

    def __init__(self, secret: str, issuer: str, ttl_seconds: int) -> None:
        self.secret = secret
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``."""
        app.extensions["pygrid.auth"] = self

    def current_user(self) -> User:
        """The user the request's token names; Unauthorized if the token or user is not valid."""
        try:
            claims = decode_token(self.secret, self.issuer, bearer_token())
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        user = db_session().get(User, claims.user_id)
        # A changed password or role bumps token_version: older tokens stop working at once.
        if user is None or user.token_version != claims.version or user.role != claims.role:
            raise Unauthorized("token is no longer valid; log in again")
        return user


class WorkerAuth:
    """Checks worker tokens (``pgw_...``) on Worker routes (``init_app`` style)."""

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``."""
        app.extensions["pygrid.workers"] = self

    def current_worker(self) -> WorkerToken:
        """The live worker token the request carries; Unauthorized otherwise."""
        from pygrid.data_centric.worker_tokens import authenticate

        return authenticate(db_session(), bearer_token())
