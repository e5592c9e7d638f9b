"""The PyGrid Network: registry of Nodes, search across them, routing, dashboard."""

from __future__ import annotations

from flask import Flask

from pygrid.config import AppKind
from pygrid.server.app import ConfigArg, build_app


def create_app(config: ConfigArg = None) -> Flask:
    """Build a Network app: defaults, then the environment, then ``config`` (settings or a dict)."""
    from pygrid.apps.network import dashboard, registry, routing, search

    return build_app(
        __name__,
        AppKind.network,
        config,
        blueprints=(registry.bp, search.bp, routing.bp, dashboard.bp),
    )
