"""Short-lived JWTs for people: HS256 pinned, issuer, audience, expiry and version checked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
USER_AUDIENCE = "pygrid:user"


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or revoked."""


@dataclass(frozen=True)
class TokenClaims:
    """What a valid user token says."""

    user_id: int
    role: str
    version: int
    expires_at: int


def issue_token(
    secret: str, issuer: str, user_id: int, role: str, version: int, ttl_seconds: int
) -> tuple[str, int]:
    """A signed token for ``user_id`` and the Unix time it expires."""
    now = int(time.time())
    expires_at = now + ttl_seconds
    claims = {
        "sub": str(user_id),
        "role": role,
        "ver": version,
        "iss": issuer,
        "aud": USER_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": expires_at,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires_at


def decode_token(secret: str, issuer: str, token: str) -> TokenClaims:
    """Check ``token`` and return its claims; the algorithm list is pinned, so 'none' never passes."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=USER_AUDIENCE,
            issuer=issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
            leeway=5,
        )
        return TokenClaims(
            user_id=int(claims["sub"]),
            role=str(claims["role"]),
            version=int(claims["ver"]),
            expires_at=int(claims["exp"]),
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired; log in again") from None
    except (jwt.InvalidTokenError, KeyError, ValueError, TypeError):
        raise TokenError("token is invalid") from None
