"""Domain errors. Services raise them; the HTTP layer turns each into a 4xx JSON answer.

Each carries the HTTP status it maps to so there is exactly one table of mappings: this file.
"""

from __future__ import annotations

from typing import Any


class PyGridError(Exception):
    """Base of every error a user may see. ``detail`` is extra JSON-safe context."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInput(PyGridError):
    """The request is well-formed but its content is not acceptable."""

    status = 422
    code = "invalid_input"


class Unauthorized(PyGridError):
    """No valid credentials were presented."""

    status = 401
    code = "unauthorized"


class Forbidden(PyGridError):
    """The caller is known but lacks the permission."""

    status = 403
    code = "forbidden"


class NotFound(PyGridError):
    """The thing asked for does not exist (or the caller may not know it does)."""

    status = 404
    code = "not_found"


class Conflict(PyGridError):
    """The request clashes with the current state (duplicate, already done)."""

    status = 409
    code = "conflict"
