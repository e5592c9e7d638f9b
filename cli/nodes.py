"""``pygrid nodes``: the Nodes a Network knows, with their status; remove one.

Also which Network the Network commands talk to, and as whom: ``--network`` (or
``PYGRID_NETWORK``), else the local grid's Network with its Owner from credentials.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.servers import fail
from pygrid.cli.session import EmailOption, PasswordOption

if TYPE_CHECKING:
    from pygrid.client.http import HttpClient

app = typer.Typer(help="Nodes of a Network: list them with their status, remove one.")

NO_LOCAL_NETWORK = "no local grid is running: start one with `pygrid up` or pass --network URL"
MANAGER = "a user allowed to manage Nodes (owner or admin of the Network)"

NetworkOption = Annotated[
    str | None,
    typer.Option(
        "--network",
        envvar="PYGRID_NETWORK",
        help="URL of the Network (default: the Network of the local grid).",
        show_default=False,
    ),
]


def network_target(
    network: str | None, email: str | None, password: str | None, who: str | None
) -> tuple[str, str | None, str | None]:
    """The Network's URL and credentials to log in with (none needed when ``who`` is None)."""
    if network is not None:
        url = network.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise fail(
                f"--network must be an http(s) URL such as http://127.0.0.1:7000, not {network!r}"
            )
        if who is not None and (not email or not password):
            raise fail(
                f"--network needs {who}: pass --email and --password "
                "(or set PYGRID_EMAIL and PYGRID_PASSWORD)"
            )
        return url, email, password

    from pygrid.localgrid import LocalGrid, LocalGridError

    grid = LocalGrid()
    try:
        networks = [m for m in grid.running() if m.app == "network"]
    except LocalGridError as exc:
        raise fail(exc.message) from None
    if not networks:
        raise fail(NO_LOCAL_NETWORK)
    if who is not None and (not email or not password):
        try:
            credentials = json.loads(grid.credentials_file.read_text())
            email = email or str(credentials["email"])
            password = password or str(credentials["password"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(
                f"cannot read the local grid's Owner credentials in {grid.credentials_file} ({exc})"
            ) from None
    return str(networks[0].url), email, password


@contextmanager
def connect(
    network: str | None,
    email: str | None,
    password: str | None,
    who: str | None = MANAGER,
) -> Iterator[HttpClient]:
    """An HTTP client for the Network, logged in unless ``who`` is None; a refusal inside
    the block exits 1 with one line."""
    from pygrid.client.http import GridError, HttpClient

    url, email, password = network_target(network, email, password, who)
    client = HttpClient(url, timeout=30)
    try:
        if who is not None:
            assert email and password
            try:
                client.login(email, password)
            except GridError as exc:
                raise session.login_failure(url, email, exc) from None
        try:
            yield client
        except GridError as exc:
            raise fail(session.describe(exc)) from None
    finally:
        client.close()


def _last_heartbeat(node: dict[str, Any]) -> str | None:
    return session.when(node.get("last_seen"))


@app.command("list")
def list_nodes(
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    network: NetworkOption = None,
) -> None:
    """Every Node the Network knows (removed ones left out): status, last heartbeat, catalogue."""
    with connect(network, None, None, who=None) as client:
        found: list[dict[str, Any]] = client.json("GET", "/registry/nodes")["nodes"]
    if fmt == OutputFormat.json:
        session.print_json(found)
        return
    session.print_table(
        found,
        {
            "id": "id",
            "status": "status",
            "url": "url",
            "last heartbeat (UTC)": _last_heartbeat,
            "interval (s)": "heartbeat_seconds",
            "datasets": lambda n: len(n.get("datasets") or []),
            "processes": lambda n: len(n.get("processes") or []),
        },
        empty="No Nodes: start one with pygrid node --network URL --network-token T.",
    )


@app.command("remove")
def remove(
    node_id: Annotated[str, typer.Argument(help="The Node's id (see pygrid nodes list).")],
    network: NetworkOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Remove a Node: its credential stops working; it must join again with a new join token."""
    with connect(network, email, password) as client:
        client.request("DELETE", f"/registry/nodes/{node_id}")
    session.console().print(f"Removed Node {node_id}")
