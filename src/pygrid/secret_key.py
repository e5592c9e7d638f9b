"""The server's signing secret: given by the operator, or generated once and kept 0600.

No server ever starts with a hard-coded default secret (DESIGN.md section 3).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_FILE = "secret_key"
MIN_SECRET_LENGTH = 32


class SecretKeyError(RuntimeError):
    """The secret key given or stored is unusable."""


def load_or_create_secret_key(data_dir: Path, given: str | None = None) -> str:
    """Return ``given`` if set, else the stored key, else a new key written 0600 to ``data_dir``."""
    if given:
        if len(given) < MIN_SECRET_LENGTH:
            raise SecretKeyError(
                f"SECRET_KEY is too short ({len(given)} characters); use at least "
                f"{MIN_SECRET_LENGTH}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return given
    path = data_dir / SECRET_FILE
    if path.exists():
        key = path.read_text().strip()
        if len(key) < MIN_SECRET_LENGTH:
            raise SecretKeyError(
                f"the stored secret key in {path} is too short; delete it to regenerate"
            )
        return key
    key = secrets.token_urlsafe(48)
    # O_EXCL: when several processes start at once, exactly one creates the key and all read it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_secret_key(data_dir)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key
