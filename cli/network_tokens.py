"""``pygrid network-token``: join tokens a Node spends to join a Network."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.nodes import NetworkOption, connect
from pygrid.cli.session import EmailOption, PasswordOption

app = typer.Typer(help="Join tokens for Nodes: create one, list them, revoke one.")


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A label, e.g. who it is for.")] = "",
    uses: Annotated[
        int, typer.Option("--uses", min=1, max=1000, help="How many Nodes may join with it.")
    ] = 1,
    expires_hours: Annotated[
        float,
        typer.Option("--expires-hours", min=0.01, max=8760, help="Hours until it expires."),
    ] = 24,
    network: NetworkOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Create a join token; it is printed once, with the command that joins a Node."""
    body = {"name": name, "uses": uses, "expires_in_hours": expires_hours}
    with connect(network, email, password) as client:
        created = client.json("POST", "/registry/join-tokens", json=body)
        url = client.url
    out = session.console()
    label = f" {created['name']!r}" if created["name"] else ""
    out.print(
        f"Join token {created['id']}{label} ({created['uses_left']} use(s), "
        f"expires {session.when(created['expires_at'])} UTC):"
    )
    out.print(created["token"])
    out.print("It is shown only this once. Join a Node with it:")
    out.print(f"  pygrid node --network {url} --network-token {created['token']}")
    out.print(
        "(or set NETWORK_TOKEN instead of --network-token: other local users can read a command line)"
    )


def _state(token: dict[str, Any]) -> str:
    if token["revoked"]:
        return "revoked"
    if token["uses_left"] <= 0:
        return "used up"
    from datetime import UTC, datetime

    expires = datetime.fromisoformat(str(token["expires_at"]).replace("Z", "+00:00"))
    return "expired" if expires <= datetime.now(UTC) else "usable"


@app.command("list")
def list_tokens(
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    network: NetworkOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Every join token (never the secret): uses left, expiry, whether it still works."""
    with connect(network, email, password) as client:
        found: list[dict[str, Any]] = client.json("GET", "/registry/join-tokens")["tokens"]
    if fmt == OutputFormat.json:
        session.print_json(found)
        return
    session.print_table(
        found,
        {
            "id": "id",
            "name": "name",
            "state": _state,
            "uses left": "uses_left",
            "expires (UTC)": lambda t: session.when(t.get("expires_at")),
            "created (UTC)": lambda t: session.when(t.get("created_at")),
        },
        empty="No join tokens: create one with pygrid network-token create.",
    )


@app.command("revoke")
def revoke(
    token_id: Annotated[
        int, typer.Argument(help="The token's id (see pygrid network-token list).")
    ],
    network: NetworkOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Revoke a join token: no Node can join with it any more (joined Nodes stay)."""
    with connect(network, email, password) as client:
        client.request("DELETE", f"/registry/join-tokens/{token_id}")
    session.console().print(f"Revoked join token {token_id}")
