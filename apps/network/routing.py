"""``/nodes/<id>/<path>``: requests for a Node, forwarded through the Network (docs/network.md).

The route is public on the Network: whatever credential the client sends (``Authorization``)
goes on to the Node, and the Node alone decides what it allows. The Network holds no user or
permission of any Node, so it could not judge a Node's request if it wanted to.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug import Response

from pygrid.network.proxy import Proxy
from pygrid.network.registry import route_target
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint

bp = Blueprint("network_routing", __name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@bp.record_once
def _init_proxy(state: BlueprintSetupState) -> None:
    settings = state.app.config["PYGRID_SETTINGS"]
    state.app.extensions["pygrid.proxy"] = Proxy(settings.route_timeout)


@endpoint(
    bp,
    "/nodes/<node_id>/<path:path>",
    methods=METHODS,
    summary="Forward a request to a Node (the Node checks its credentials)",
    public=True,
)
def route(node_id: str, path: str) -> Response:
    """The Node's answer to the same request, streamed, with ``X-PyGrid-Node``."""
    session = db_session()
    node_url = route_target(session, node_id)
    # Free the database connection now: the forwarded request may take up to the route timeout.
    session.close()
    proxy: Proxy = current_app.extensions["pygrid.proxy"]
    return proxy.forward(request, node_id, node_url, path)
