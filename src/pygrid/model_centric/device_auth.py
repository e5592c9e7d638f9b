"""Device tokens: JWTs signed by the process owner's key (HS256 secret or RS256/ES256 public key
in ``server_config.authentication``). The algorithm is pinned by the config, never by the token,
so ``alg: none`` and algorithm-confusion tokens are refused; ``exp`` is required."""

from __future__ import annotations

import jwt

from pygrid.errors import Unauthorized
from pygrid.model_centric.configs import DeviceAuth, NoAuth, SharedSecretAuth

ALGORITHMS = {"hs256": "HS256", "rs256": "RS256", "es256": "ES256"}


def check_device_token(auth: DeviceAuth, token: str | None) -> str | None:
    """The token's subject (or None for anonymous processes); Unauthorized for a bad token."""
    if isinstance(auth, NoAuth):
        return None
    if not token:
        raise Unauthorized("this process needs an auth_token signed by its owner")
    key = auth.secret if isinstance(auth, SharedSecretAuth) else auth.public_key
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHMS[auth.type]],
            options={"require": ["exp"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("auth_token has expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("auth_token is invalid") from None
    subject = claims.get("sub")
    return str(subject)[:200] if subject is not None else None
