"""``/dashboard/*`` on a Network: the registered Nodes with their status and last heartbeat, and
a search box over the public ``GET /search`` (docs/network.md)."""

from __future__ import annotations

from flask import render_template

from pygrid.network.registry import node_views
from pygrid.server.dashboard import NavItem, dashboard_blueprint, page
from pygrid.server.database import db_session

bp = dashboard_blueprint("network_dashboard", __name__, nav=(NavItem(".index", "Nodes"),))


@page(bp, "/", summary="Network dashboard: Nodes and search")
def index() -> str:
    """Every registered Node as ``GET /registry/nodes`` shows it, and the search box."""
    nodes = node_views(db_session())
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    return render_template("dashboard/network/index.html", nodes=nodes, counts=counts)
