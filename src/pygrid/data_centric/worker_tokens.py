"""Worker tokens: ``pgw_<id>_<secret>``, shown once; the Node keeps only a SHA-256 of the secret.

A secret of 32 random bytes needs no slow hash: nobody can guess it, and a leaked database does
not let anyone present it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pygrid.auth.opaque import hash_secret, new_secret, parse_token, secret_matches, token_text
from pygrid.data_centric import audit
from pygrid.db.models import User, WorkerToken, utcnow
from pygrid.errors import NotFound, Unauthorized

PREFIX = "pgw_"


def create_token(
    session: Session, creator: User, name: str, expires_in_days: int | None
) -> tuple[WorkerToken, str]:
    """A new token row and the token text (the only time it exists in clear)."""
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    return _mint(session, creator, name, expires_at)


def _mint(
    session: Session, creator: User | None, name: str, expires_at: datetime | None
) -> tuple[WorkerToken, str]:
    secret = new_secret()
    token = WorkerToken(
        name=name,
        secret_hash=hash_secret(secret),
        created_by=creator.id if creator is not None else None,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    audit.record(session, "worker_token.create", creator, token_id=token.id, name=name)
    session.commit()
    return token, token_text(PREFIX, token.id, secret)


def authenticate(session: Session, text: str) -> WorkerToken:
    """The live token ``text`` names; Unauthorized (one message for forged or unknown) if none."""
    parsed = parse_token(PREFIX, text)
    if parsed is None:
        raise Unauthorized(
            "this route needs a worker token (pgw_...) from pygrid worker-token create"
        )
    token_id, secret = parsed
    token = session.get(WorkerToken, token_id)
    if token is None or not secret_matches(token.secret_hash, secret):
        raise Unauthorized("worker token is invalid")
    if token.revoked_at is not None:
        raise Unauthorized(
            "worker token was revoked; create a new one with pygrid worker-token create"
        )
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise Unauthorized(
            "worker token has expired; create a new one with pygrid worker-token create"
        )
    return token


def list_tokens(session: Session) -> list[WorkerToken]:
    """Every token, newest first (revoked ones too, for the record)."""
    return list(session.scalars(select(WorkerToken).order_by(WorkerToken.id.desc())))


def revoke_token(session: Session, who: User, token_id: int) -> WorkerToken:
    """Revoke a token at once; a Worker using it gets 401 on its next request."""
    token = session.get(WorkerToken, token_id)
    if token is None:
        raise NotFound(f"no worker token with id {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, "worker_token.revoke", who, token_id=token.id, name=token.name)
        session.commit()
    return token


def token_json(token: WorkerToken) -> dict[str, Any]:
    """A token as the API lists it (never the secret)."""
    return {
        "id": token.id,
        "name": token.name,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_seen": token.last_seen,
        "last_label": token.last_label,
    }


def create_system_token(session: Session, name: str) -> tuple[WorkerToken, str]:
    """A token the Node mints for itself (its cloud Workers'), with no user behind it.

    Audited as the system; otherwise a token like any other (listed, revocable).
    """
    return _mint(session, None, name, None)


def live_tokens_named(session: Session, name: str) -> list[WorkerToken]:
    """The unrevoked tokens called ``name``, oldest first."""
    query = select(WorkerToken).where(WorkerToken.name == name, WorkerToken.revoked_at.is_(None))
    return list(session.scalars(query.order_by(WorkerToken.id)))


def revoke_as_system(session: Session, tokens: list[WorkerToken]) -> None:
    """Revoke ``tokens`` on the Node's own behalf (audited as the system)."""
    for token in tokens:
        if token.revoked_at is None:
            token.revoked_at = utcnow()
            audit.record(session, "worker_token.revoke", None, token_id=token.id, name=token.name)
    session.commit()
