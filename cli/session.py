"""Which Node a command talks to and as whom: shared by the admin commands and the demos.

Explicit options (or their environment variables) win; without ``--node`` the first Node of
the local grid (``pygrid up``) is used, with the Owner credentials from its credentials.json.
A refusal from the Node becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pygrid.cli.servers import fail

if TYPE_CHECKING:
    from rich.console import Console

    from pygrid.client.data_centric import DataCentricClient
    from pygrid.client.http import GridError

NO_LOCAL_GRID = "no local grid is running: start one with `pygrid up` or pass --node URL"

NodeOption = Annotated[
    str | None,
    typer.Option(
        "--node",
        envvar="PYGRID_NODE",
        help="URL of the Node (default: the first Node of the local grid).",
        show_default=False,
    ),
]
EmailOption = Annotated[
    str | None,
    typer.Option(
        "--email",
        envvar="PYGRID_EMAIL",
        help="Email to log in with (default with the local grid: its Owner).",
        show_default=False,
    ),
]
PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="PYGRID_PASSWORD",
        help="That user's password (default with the local grid: from its credentials.json).",
        show_default=False,
    ),
]


def target(
    node: str | None,
    email: str | None,
    password: str | None,
    who: str = "a user allowed to do this",
) -> tuple[str, str, str]:
    """The Node's URL and the credentials to log in with; ``who`` says which user is needed."""
    if node is not None:
        url = node.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise fail(f"--node must be an http(s) URL such as http://127.0.0.1:5000, not {node!r}")
        if not email or not password:
            raise fail(
                f"--node needs {who}: pass --email and --password "
                "(or set PYGRID_EMAIL and PYGRID_PASSWORD)"
            )
        return url, email, password

    from pygrid.localgrid import LocalGrid, LocalGridError

    grid = LocalGrid()
    try:
        nodes = [m for m in grid.running() if m.app == "node"]
    except LocalGridError as exc:
        raise fail(exc.message) from None
    if not nodes:
        raise fail(NO_LOCAL_GRID)
    if not email or not password:
        try:
            credentials = json.loads(grid.credentials_file.read_text())
            email = email or str(credentials["email"])
            password = password or str(credentials["password"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(
                f"cannot read the local grid's Owner credentials in {grid.credentials_file} ({exc})"
            ) from None
    return str(nodes[0].url), email, password


def login_failure(url: str, email: str, exc: GridError) -> typer.Exit:
    """One line for a login that did not work."""
    if exc.status in (401, 403):
        return fail(f"{url} refused the login of {email}: {exc.message}")
    return fail(describe(exc))


def describe(exc: GridError) -> str:
    """The Node's message, plus its detail when that says more, on one line."""
    if exc.status is None or exc.detail is None:
        return exc.message
    detail = exc.detail
    if isinstance(detail, dict) and all(
        key == "status" or _said(value, exc.message) for key, value in detail.items()
    ):
        return exc.message  # the detail repeats what the message says
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        text = "; ".join(f"{d['loc']}: {d['msg']}" if d.get("loc") else d["msg"] for d in detail)
    else:
        text = json.dumps(detail, separators=(", ", ": "), default=str)
    return f"{exc.message} ({' '.join(text.split())})"


def _said(value: Any, message: str) -> bool:
    """Whether ``message`` already states ``value`` (a number as the Node rounds it, too)."""
    if isinstance(value, float) and f"{value:.4g}" in message:
        return True
    return str(value) in message


@contextmanager
def connect(
    node: str | None,
    email: str | None,
    password: str | None,
    who: str = "a user allowed to do this",
) -> Iterator[DataCentricClient]:
    """A logged-in data-centric client; a GridError inside the block exits 1 with one line."""
    from pygrid.client.data_centric import DataCentricClient
    from pygrid.client.http import GridError

    url, email, password = target(node, email, password, who)
    client = DataCentricClient(url)
    try:
        try:
            client.login(email, password)
        except GridError as exc:
            raise login_failure(url, email, exc) from None
        try:
            yield client
        except GridError as exc:
            raise fail(describe(exc)) from None
    finally:
        client.close()


def console() -> Console:
    """Standard output, no markup (names are printed as given); soft wrap keeps URLs and
    tokens whole on a narrow terminal."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=True, markup=False)
    if not out.is_terminal:
        # A pipe gets 80 columns by default, which would cut table cells short.
        out = Console(highlight=False, soft_wrap=True, markup=False, width=200)
    return out


def print_json(value: Any) -> None:
    """``value`` as indented JSON on standard output."""
    typer.echo(json.dumps(value, indent=2, default=str))


def print_table(rows: list[dict[str, Any]], columns: dict[str, Any], empty: str) -> None:
    """A rich table; ``columns`` maps a header to a key of each row or a function of the row."""
    out = console()
    if not rows:
        out.print(empty)
        return
    from rich.table import Table

    table = Table()
    for header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        cells = [(get(row) if callable(get) else row.get(get)) for get in columns.values()]
        table.add_row(*(cell_text(cell) for cell in cells))
    out.print(table)


def when(value: str | None) -> str | None:
    """An API timestamp as ``2026-01-31 12:00:00`` (UTC), to the second."""
    if not value:
        return None
    return value.replace("T", " ").split(".")[0].removesuffix("Z")


def cell_text(value: Any) -> str:
    """How a value reads in a table cell: '-' for nothing, lists joined, floats short."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)
