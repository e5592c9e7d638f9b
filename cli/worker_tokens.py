"""``pygrid worker-token``: the credentials Workers use to claim and run approved jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.session import EmailOption, NodeOption, PasswordOption

app = typer.Typer(help="Worker tokens: create one per Worker, list them, revoke one.")

MANAGER = "a user allowed to manage Workers (owner or admin)"


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A label for the Worker.")] = "worker",
    expires_days: Annotated[
        int | None,
        typer.Option(
            "--expires-days",
            min=1,
            help="Days until it expires (default: never).",
            show_default=False,
        ),
    ] = None,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Create a worker token; it is printed once, with the command that starts a Worker."""
    with session.connect(node, email, password, MANAGER) as client:
        created = client.create_worker_token(name, expires_days)
        url = client.url
    out = session.console()
    expires = created.get("expires_at") or "never"
    out.print(f"Worker token {created['id']} {created['name']!r} (expires: {expires}):")
    out.print(created["token"])
    out.print("It is shown only this once. Start a Worker with it:")
    out.print(f"  pygrid worker --node {url} --token {created['token']}")
    out.print(
        "(or set PYGRID_WORKER_TOKEN instead of --token: other local users can read a command line)"
    )


@app.command("list")
def list_tokens(
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Every worker token (never the secret) and when its Worker was last seen."""
    with session.connect(node, email, password, MANAGER) as client:
        tokens = client.worker_tokens()
    if fmt == OutputFormat.json:
        session.print_json(tokens)
        return
    session.print_table(
        tokens,
        {
            "id": "id",
            "name": "name",
            "created (UTC)": lambda t: session.when(t.get("created_at")),
            "expires": lambda t: session.when(t.get("expires_at")),
            "last seen": lambda t: session.when(t.get("last_seen")),
            "last Worker": "last_label",
            "revoked": lambda t: session.when(t.get("revoked_at")),
        },
        empty="No worker tokens: create one with pygrid worker-token create.",
    )


@app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (see pygrid worker-token list).")],
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Revoke a worker token: its Worker's next request is refused."""
    with session.connect(node, email, password, MANAGER) as client:
        client.revoke_worker_token(token_id)
    session.console().print(f"Revoked worker token {token_id}")
