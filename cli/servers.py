"""``pygrid node`` and ``pygrid network``: start a server in the foreground under gunicorn.

Options take PyGrid's documented names in both spellings (``--num_replicas`` and
``--num-replicas``) and the documented environment variables.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pygrid.choices import AppKind

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "--data_dir",
        envvar="PYGRID_DATA_DIR",
        help="Folder for the SQLite database, blobs and secret key (default: ~/.pygrid/<app>/<id>).",
        show_default=False,
    ),
]
StartLocalDb = Annotated[
    bool,
    typer.Option(
        "--start_local_db",
        "--start-local-db",
        help="Use the embedded SQLite database in the data dir (the default; overrides DATABASE_URL).",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        "--database_url",
        envvar="DATABASE_URL",
        help="SQLAlchemy URL of the database, e.g. postgresql://user:pw@host/db (default: SQLite).",
        show_default=False,
    ),
]
BlobUrl = Annotated[
    str | None,
    typer.Option(
        "--blob-url",
        "--blob_url",
        envvar="PYGRID_BLOB_URL",
        help="Blob store: a folder or s3://bucket/prefix (default: <data-dir>/blobs).",
        show_default=False,
    ),
]
OwnerEmail = Annotated[
    str | None,
    typer.Option(
        "--owner-email",
        "--owner_email",
        envvar="PYGRID_OWNER_EMAIL",
        help="Email of the Owner created at first start (password: PYGRID_OWNER_PASSWORD or a prompt).",
        show_default=False,
    ),
]
Threads = Annotated[int, typer.Option("--threads", help="Threads per replica.")]


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one line on stderr; the caller raises the returned Exit(1)."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


_ENV_ONLY = (
    "max_content_length",
    "token_ttl_seconds",
    "scheduler_interval",
    "lease_seconds",
    "cloud",
    "worker_group",
    "jobs_per_worker",
    "autoscale_cooldown",
)


def _settings(values: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from pygrid.config import COMMON_ENV_VARS, ServerSettings, default_data_dir

    values = {k: v for k, v in values.items() if v is not None}
    # Settings with no CLI option come from the environment only (PYGRID_MAX_CONTENT_LENGTH, ...).
    # (Not DATABASE_URL & co: their options already read them, and --start_local_db overrides.)
    for field in _ENV_ONLY:
        var = COMMON_ENV_VARS[field]
        if field not in values and os.environ.get(var):
            values[field] = os.environ[var]
    values.setdefault("data_dir", default_data_dir(values["app"], values["id"]))
    try:
        return ServerSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise fail(f"invalid option: {problems}") from None


def _owner_credentials(settings: Any) -> tuple[str, str, Path | None]:
    """Email and password for a new Owner; a generated password is written to a 0600 file."""
    email = settings.owner_email or f"owner@{settings.id}.pygrid.local"
    if settings.owner_password:
        return email, settings.owner_password.get_secret_value(), None
    if sys.stdin.isatty():
        password = typer.prompt(
            f"Password for the Owner {email}", hide_input=True, confirmation_prompt=True
        )
        return email, password, None
    password = secrets.token_urlsafe(18)
    path = settings.data_dir / "owner-credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"email": email, "password": password}, handle)
    return email, password, path


def run_server(app: AppKind, values: dict[str, Any]) -> None:
    """Validate, prepare (data dir, database, migrations, secret, Owner), then serve."""
    from sqlalchemy.orm import Session

    from pygrid import users
    from pygrid.errors import PyGridError
    from pygrid.serve import PortInUse, check_port_free, prepare_metrics_dir, serve
    from pygrid.server.bootstrap import StartupError, prepare

    settings = _settings({"app": app, **values})
    try:
        check_port_free(settings.host, settings.port)
        prepared = prepare(settings)
    except (PortInUse, StartupError) as exc:
        raise fail(str(exc)) from None
    if prepared.owner_created:
        typer.echo(f"Created the Owner {settings.owner_email}", err=True)
    with Session(prepared.engine) as session:
        if not users.owner_exists(session):
            email, password, written_to = _owner_credentials(settings)
            try:
                users.ensure_owner(session, email, password)
            except PyGridError as exc:
                raise fail(f"cannot create the Owner: {exc.message}") from None
            where = f"; password written to {written_to} (0600)" if written_to else ""
            typer.echo(f"Created the Owner {email}{where}", err=True)
    prepared.engine.dispose()
    prepare_metrics_dir(settings)
    _configure_logging()
    typer.echo(f"PyGrid {app} {settings.id!r} on http://{settings.host}:{settings.port}", err=True)
    serve(settings, _factory(app))


def _configure_logging() -> None:
    """PyGrid's own messages (joining the Network, requeued jobs) beside gunicorn's, on stderr."""
    import logging

    logger = logging.getLogger("pygrid")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S %z"
        )
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _factory(app: AppKind) -> Any:
    def factory(settings: Any) -> Any:
        if app is AppKind.node:
            from pygrid.apps.node import create_app
        else:
            from pygrid.apps.network import create_app
        return create_app(settings)

    return factory


def node(
    port: Annotated[
        int, typer.Option("-p", "--port", envvar="GRID_NODE_PORT", help="Port to listen on.")
    ] = 5000,
    host: Annotated[
        str,
        typer.Option("--host", envvar="GRID_NODE_HOST", help="Address to bind (0.0.0.0 for all)."),
    ] = "127.0.0.1",
    num_replicas: Annotated[
        int,
        typer.Option(
            "--num_replicas",
            "--num-replicas",
            envvar="NUM_REPLICAS",
            help="Server processes sharing the database and blob store.",
        ),
    ] = 1,
    node_id: Annotated[
        str, typer.Option("--id", envvar="NODE_ID", help="This Node's id.")
    ] = "default",
    start_local_db: StartLocalDb = False,
    network: Annotated[
        str | None,
        typer.Option(
            "--network", envvar="NETWORK", help="URL of a Network to join.", show_default=False
        ),
    ] = None,
    network_token: Annotated[
        str | None,
        typer.Option(
            "--network-token",
            "--network_token",
            envvar="NETWORK_TOKEN",
            help=(
                "Join token from the Network's admin (pygrid network-token create), spent once; "
                "the credential it buys is kept in <data-dir>/network.json. Prefer the "
                "NETWORK_TOKEN variable: a command line is visible to every local user (ps)."
            ),
            show_default=False,
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            "--public_url",
            envvar="PYGRID_PUBLIC_URL",
            help="URL the Network and its clients reach this Node at (default: http://<host>:<port>).",
            show_default=False,
        ),
    ] = None,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(
            "--heartbeat-seconds",
            "--heartbeat_seconds",
            envvar="PYGRID_HEARTBEAT_SECONDS",
            min=0.2,
            max=3600,
            help="Seconds between heartbeats to the Network.",
        ),
    ] = 10.0,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    owner_email: OwnerEmail = None,
    threads: Threads = 8,
) -> None:
    """Run a Node: model-centric FL processes and private datasets.

    The secret key comes from SECRET_KEY, else one is generated at first start and kept 0600 in
    the data dir. The Owner is created at first start from --owner-email and PYGRID_OWNER_PASSWORD
    (or a prompt; with no terminal, a generated password is written to the data dir).

    With --network, the Node joins that Network with its join token, then sends it a heartbeat
    with its public catalogue (dataset metadata, FL processes, load) every --heartbeat-seconds.
    A restarted Node comes back with its saved credential and spends no token.
    """
    if network_token and not network:
        raise fail("a join token (--network-token / NETWORK_TOKEN) needs --network (NETWORK)")
    run_server(
        AppKind.node,
        {
            "port": port,
            "host": host,
            "num_replicas": num_replicas,
            "id": node_id,
            "network_url": network,
            "network_token": network_token,
            "public_url": public_url,
            "heartbeat_seconds": heartbeat_seconds,
            "data_dir": data_dir,
            "threads": threads,
            "database_url": None if start_local_db else database_url,
            "blob_url": blob_url,
            **_env_secrets(owner_email),
        },
    )


def network(
    port: Annotated[
        int, typer.Option("-p", "--port", envvar="GRID_NETWORK_PORT", help="Port to listen on.")
    ] = 7000,
    host: Annotated[
        str,
        typer.Option(
            "--host", envvar="GRID_NETWORK_HOST", help="Address to bind (0.0.0.0 for all)."
        ),
    ] = "127.0.0.1",
    network_id: Annotated[
        str, typer.Option("--id", envvar="NETWORK_ID", help="This Network's id.")
    ] = "network",
    start_local_db: StartLocalDb = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    owner_email: OwnerEmail = None,
    threads: Threads = 8,
    route_timeout: Annotated[
        float,
        typer.Option(
            "--route-timeout",
            envvar="PYGRID_ROUTE_TIMEOUT",
            min=0.1,
            max=3600,
            help="Seconds a request routed to a Node (/nodes/<id>/...) may wait for its answer.",
        ),
    ] = 60.0,
) -> None:
    """Run a Network: the registry of Nodes, search and routing.

    The secret key and the Owner are set up as for `pygrid node`.
    """
    run_server(
        AppKind.network,
        {
            "port": port,
            "host": host,
            "id": network_id,
            "data_dir": data_dir,
            "threads": threads,
            "route_timeout": route_timeout,
            "database_url": None if start_local_db else database_url,
            "blob_url": blob_url,
            **_env_secrets(owner_email),
        },
    )


def _env_secrets(owner_email: str | None) -> dict[str, Any]:
    # Secrets come from the environment only: a command line is visible to every local user.
    return {
        "owner_email": owner_email,
        "owner_password": os.environ.get("PYGRID_OWNER_PASSWORD") or None,
        "secret_key": os.environ.get("SECRET_KEY") or None,
    }
