"""Opaque tokens: ``<prefix><id>_<secret>`` (worker and join tokens) and the secrets inside them.

A secret is 32 random bytes, so it needs no slow hash: nobody can guess it, and the SHA-256
digest a database keeps does not let anyone who reads it present the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_SECRET = r"[A-Za-z0-9_-]{20,100}"


def new_secret() -> str:
    """32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest the database keeps instead of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(stored_hash: str, secret: str) -> bool:
    """Whether ``secret`` is the one ``stored_hash`` was made from (constant time)."""
    return hmac.compare_digest(stored_hash, hash_secret(secret))


def token_text(prefix: str, token_id: int, secret: str) -> str:
    """``<prefix><id>_<secret>``: what the holder is shown once."""
    return f"{prefix}{token_id}_{secret}"


def parse_token(prefix: str, text: str) -> tuple[int, str] | None:
    """(id, secret) of a ``<prefix><id>_<secret>`` text; None if it is not shaped like one."""
    match = re.fullmatch(rf"{re.escape(prefix)}(\d{{1,18}})_({_SECRET})", text)
    return (int(match.group(1)), match.group(2)) if match else None


def is_secret_text(prefix: str, text: str) -> bool:
    """Whether ``text`` is ``<prefix><secret>`` (a credential with no id in it)."""
    return re.fullmatch(rf"{re.escape(prefix)}{_SECRET}", text) is not None
