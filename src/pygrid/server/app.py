"""The app factory every PyGrid server is built with (Node and Network add their blueprints)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any

from flask import Blueprint, Flask
from flask.json.provider import DefaultJSONProvider

from pygrid.config import AppKind, ServerSettings, settings_from_env
from pygrid.server.auth import Auth
from pygrid.server.blueprints import meta, status, users
from pygrid.server.bootstrap import Prepared, prepare
from pygrid.server.database import Database
from pygrid.server.errors import register_error_handlers
from pygrid.server.metrics import Metrics

ConfigArg = ServerSettings | Mapping[str, Any] | None


class JSONProvider(DefaultJSONProvider):
    """Datetimes as ISO 8601 (Flask's default is the HTTP date format), keys in given order."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        """ISO 8601 for dates; Flask's handling for the rest."""
        if isinstance(o, datetime | date):
            return o.isoformat()
        return DefaultJSONProvider.default(o)


def resolve_settings(app: AppKind, config: ConfigArg) -> tuple[ServerSettings, dict[str, Any]]:
    """Settings from ``config``; Flask-only keys (upper case) come back separately as overrides."""
    if isinstance(config, ServerSettings):
        return config, {}
    config = dict(config or {})
    flask_overrides = {k: v for k, v in config.items() if k.isupper()}
    fields = {k: v for k, v in config.items() if not k.isupper()}
    return settings_from_env(app, fields), flask_overrides


def build_app(
    import_name: str,
    app_kind: AppKind,
    config: ConfigArg,
    blueprints: Iterable[Blueprint] = (),
    setup: Callable[[Flask, Prepared], None] | None = None,
) -> Flask:
    """A ready Flask app: defaults, then environment, then ``config``; database migrated."""
    settings, flask_overrides = resolve_settings(app_kind, config)
    prepared = prepare(settings)
    app = Flask(import_name)
    app.json = JSONProvider(app)
    app.config.update(
        SECRET_KEY=prepared.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        PYGRID_SETTINGS=settings,
        PYGRID_STARTED_AT=time.time(),
    )
    app.config.update(flask_overrides)
    register_error_handlers(app)
    Database(prepared.engine).init_app(app)
    Auth(prepared.secret_key, settings.issuer, settings.token_ttl_seconds).init_app(app)
    app.extensions["pygrid.blobs"] = prepared.blobs
    Metrics().init_app(app)
    for bp in (status.bp, meta.bp, users.bp, *blueprints):
        app.register_blueprint(bp)
    if setup is not None:
        setup(app, prepared)
    return app
