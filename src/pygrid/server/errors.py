"""Every 4xx and 5xx leaves as JSON ``{"error": ..., "detail": ...}``: never HTML, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pygrid.errors import PyGridError

log = logging.getLogger(__name__)


def error_response(status: int, message: str, detail: object = None) -> Response:
    """A JSON error body with ``status``."""
    response = jsonify({"error": message, "detail": detail})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""

    @app.errorhandler(PyGridError)
    def _domain_error(exc: PyGridError) -> Response:
        return error_response(exc.status, exc.message, exc.detail)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = (exc.description or exc.name or "error").strip()
        if isinstance(exc, NotFound) and exc.description == NotFound.description:
            message = f"no such route: {request.method} {request.path}"
        elif isinstance(exc, MethodNotAllowed):
            message = f"{request.method} is not allowed on {request.path}"
        response = error_response(status, message, {"status": exc.name})
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Logged with the traceback for the operator; the client learns nothing internal.
        log.exception("unhandled error")
        return error_response(500, "internal server error", None)
