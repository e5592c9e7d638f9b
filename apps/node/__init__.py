"""The PyGrid Node: hosts models for model-centric FL and private datasets for data-centric FL."""

from __future__ import annotations

from flask import Flask

from pygrid.config import AppKind
from pygrid.server.app import ConfigArg, build_app


def create_app(config: ConfigArg = None) -> Flask:
    """Build a Node app: defaults, then the environment, then ``config`` (settings or a dict)."""
    return build_app(__name__, AppKind.node, config, blueprints=())
