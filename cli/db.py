"""``pygrid db``: database administration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pygrid.cli.servers import AppKind, fail

app = typer.Typer(help="Database administration.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    app_kind: Annotated[
        AppKind, typer.Option("--app", help="Which server's database.")
    ] = AppKind.node,
    server_id: Annotated[
        str | None, typer.Option("--id", help="Server id (default: as the server).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", "--data_dir", envvar="PYGRID_DATA_DIR", help="Data dir."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", envvar="DATABASE_URL", help="Database URL (default: SQLite)."
        ),
    ] = None,
) -> None:
    """Apply every pending Alembic migration (servers also do this when they start)."""
    from pygrid.config import DEFAULT_IDS, ServerSettings, default_data_dir
    from pygrid.db.engine import mask_database_url
    from pygrid.db.migrate import head_revision
    from pygrid.server.bootstrap import StartupError, check_data_dir, open_database

    sid = server_id or DEFAULT_IDS[app_kind]
    settings = ServerSettings(
        app=app_kind,
        id=sid,
        port=1,
        data_dir=data_dir or default_data_dir(app_kind, sid),
        database_url=database_url,
    )
    try:
        if settings.database_url is None:
            check_data_dir(settings)
        open_database(settings).dispose()
    except StartupError as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"{mask_database_url(settings.resolved_database_url)} is at revision {head_revision()}"
    )
