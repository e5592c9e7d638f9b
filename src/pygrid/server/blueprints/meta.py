"""``GET /openapi.json`` and ``GET /metrics``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from pygrid.server.endpoint import endpoint
from pygrid.server.openapi import build_openapi

bp = Blueprint("meta", __name__)


@endpoint(bp, "/openapi.json", summary="OpenAPI 3.1 document of this server", public=True)
def openapi() -> Response:
    """The OpenAPI document, built once per process."""
    cached = current_app.config.get("PYGRID_OPENAPI")
    if cached is None:
        title = f"PyGrid {current_app.config['PYGRID_SETTINGS'].app}"
        cached = current_app.config["PYGRID_OPENAPI"] = build_openapi(current_app, title)
    return jsonify(cached)


@endpoint(bp, "/metrics", summary="Prometheus metrics", public=True, content="text/plain")
def metrics() -> Response:
    """Prometheus text exposition."""
    exposition: Response = current_app.extensions["pygrid.metrics"].exposition()
    return exposition
