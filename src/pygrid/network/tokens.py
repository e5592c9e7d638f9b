"""Join tokens: ``pgj_<id>_<secret>``, made by a Network admin, spent by Nodes joining.

Like worker tokens, only a SHA-256 of the 32-byte random secret is kept: nobody can guess the
secret, and a leaked database does not let anyone present it. A use is spent by one
compare-and-set UPDATE, so two Nodes racing for the last use cannot both get it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pygrid.auth.opaque import hash_secret, new_secret, parse_token, secret_matches, token_text
from pygrid.db.models import JoinToken, User, utcnow
from pygrid.errors import NotFound, PyGridError

PREFIX = "pgj_"
HOW_TO_GET_ONE = "ask the Network's admin for a new one (pygrid network-token create)"


class InvalidJoinToken(PyGridError):
    """The join token is unknown, forged, revoked, expired or used up (the message says which,
    but never whether an id exists to someone who does not hold its secret)."""

    status = 401
    code = "invalid_join_token"

    def __init__(self, message: str) -> None:
        super().__init__(message, {"code": self.code})


def create_token(
    session: Session,
    creator: User | None,
    name: str,
    uses: int,
    expires_in_hours: float,
    now: datetime | None = None,
) -> tuple[JoinToken, str]:
    """A new token row and the token text (the only time it exists in clear)."""
    now = now or utcnow()
    secret = new_secret()
    token = JoinToken(
        name=name,
        secret_hash=hash_secret(secret),
        uses_left=uses,
        created_by=creator.id if creator is not None else None,
        created_at=now,
        expires_at=now + timedelta(hours=expires_in_hours),
    )
    session.add(token)
    session.commit()
    return token, token_text(PREFIX, token.id, secret)


def check(session: Session, text: str, now: datetime | None = None) -> JoinToken:
    """The live token ``text`` names, without spending it; InvalidJoinToken saying why if none."""
    now = now or utcnow()
    parsed = parse_token(PREFIX, text)
    if parsed is None:
        raise InvalidJoinToken(f"this is not a join token (pgj_...); {HOW_TO_GET_ONE}")
    token_id, secret = parsed
    token = session.get(JoinToken, token_id)
    if token is None or not secret_matches(token.secret_hash, secret):
        # One message for unknown and forged: a stranger learns nothing about which ids exist.
        raise InvalidJoinToken(f"join token is invalid; {HOW_TO_GET_ONE}")
    _refuse_dead(token, now)
    return token


def _refuse_dead(token: JoinToken, now: datetime) -> None:
    if token.revoked_at is not None:
        raise InvalidJoinToken(f"join token {token.id} was revoked; {HOW_TO_GET_ONE}")
    if token.expires_at <= now:
        raise InvalidJoinToken(
            f"join token {token.id} expired at {token.expires_at.isoformat()}; {HOW_TO_GET_ONE}"
        )
    if token.uses_left <= 0:
        raise InvalidJoinToken(f"join token {token.id} is used up; {HOW_TO_GET_ONE}")


def spend(session: Session, token: JoinToken, now: datetime | None = None) -> None:
    """Take one use of ``token`` inside the caller's transaction (it commits or rolls back).

    The UPDATE re-checks every condition, so of two Nodes racing for the last use exactly one
    gets it; the other gets InvalidJoinToken saying why.
    """
    now = now or utcnow()
    spent = session.execute(
        update(JoinToken)
        .where(
            JoinToken.id == token.id,
            JoinToken.uses_left > 0,
            JoinToken.revoked_at.is_(None),
            JoinToken.expires_at > now,
        )
        .values(uses_left=JoinToken.uses_left - 1)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        session.refresh(token)
        _refuse_dead(token, now)
        raise InvalidJoinToken(f"join token {token.id} is used up; {HOW_TO_GET_ONE}")


def list_tokens(session: Session) -> list[JoinToken]:
    """Every join token, newest first (revoked and used-up ones too, for the record)."""
    return list(session.scalars(select(JoinToken).order_by(JoinToken.id.desc())))


def revoke_token(session: Session, token_id: int, now: datetime | None = None) -> JoinToken:
    """Revoke a token at once: no Node can join with it any more (joined Nodes stay)."""
    token = session.get(JoinToken, token_id)
    if token is None:
        raise NotFound(f"no join token with id {token_id}", {"code": "unknown_join_token"})
    if token.revoked_at is None:
        token.revoked_at = now or utcnow()
        session.commit()
    return token


def token_json(token: JoinToken) -> dict[str, Any]:
    """A token as ``GET /registry/join-tokens`` lists it (never the secret)."""
    return {
        "id": token.id,
        "name": token.name,
        "uses_left": token.uses_left,
        "expires_at": token.expires_at,
        "revoked": token.revoked_at is not None,
        "created_at": token.created_at,
    }
