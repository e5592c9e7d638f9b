"""``pygrid up``, ``pygrid down``, ``pygrid status``: a whole grid as local processes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pygrid.cli.servers import fail

if TYPE_CHECKING:
    from rich.console import Console

    from pygrid.localgrid import Event, Health, LocalGrid, LocalGridError, Member


class OutputFormat(StrEnum):
    """How ``status`` prints."""

    table = "table"
    json = "json"


def up(
    nodes: Annotated[
        str, typer.Option("--nodes", help="Comma-separated Node names.")
    ] = "alice,bob,charlie,dan",
    base_port: Annotated[
        int,
        typer.Option(
            "--base-port", "--base_port", help="Port of the first Node; the others follow."
        ),
    ] = 5000,
    network_port: Annotated[
        int, typer.Option("--network-port", "--network_port", help="Port of the Network.")
    ] = 7000,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds to wait for every member to be healthy."),
    ] = 90,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=32,
            help="Workers per Node (pygrid worker) to run its approved data-centric jobs.",
        ),
    ] = 0,
) -> None:
    """Start a local grid: a Network and Nodes as background processes under ~/.pygrid/local/.

    Each Node joins the Network with a join token made for it (passed in its environment) and
    counts as up once the Network lists it online. With --workers N, each Node also gets N
    Workers, using a worker token made for them.
    """
    from pygrid.localgrid import AlreadyUp, LocalGrid, LocalGridError

    grid = LocalGrid()
    out = _console()
    try:
        with _progress() as on_event:
            members = grid.up(
                nodes.split(","),
                base_port,
                network_port,
                workers=workers,
                timeout=timeout,
                on_event=on_event,
            )
    except AlreadyUp as exc:
        running = sum(m.alive for m in exc.members)
        out.print(
            f"The local grid is already up ({running} of {len(exc.members)} members running); "
            "nothing was changed."
        )
        out.print(_members_table(exc.members))
        if running < len(exc.members):
            out.print("Some members have stopped; restart the grid with: pygrid down && pygrid up")
        _print_footer(out, grid)
        return
    except LocalGridError as exc:
        raise _fail_with_log(exc) from None
    nodes_count = sum(m.app == "node" for m in members)
    workers_count = sum(m.app == "worker" for m in members)
    with_workers = f" with {_plural(workers_count, 'Worker')}" if workers_count else ""
    out.print(
        f"The local grid is up: a Network and {_plural(nodes_count, 'Node')}{with_workers}; "
        "every Node is online in the Network."
    )
    out.print(_members_table(members))
    _print_footer(out, grid)


def down() -> None:
    """Stop the local grid started by ``pygrid up`` (exactly those processes)."""
    from pygrid.localgrid import LocalGrid, LocalGridError

    try:
        stopped = LocalGrid().stop()
    except LocalGridError as exc:
        raise fail(exc.message) from None
    if not stopped:
        typer.echo("No local grid is running.")
        return
    for member in stopped:
        typer.echo(f"Stopped {member.name} ({member.app}, pid {member.pid}, {member.where})")
    typer.echo(
        f"The local grid is down: {len(stopped)} process{'es' if len(stopped) != 1 else ''} stopped."
    )


def status(
    output: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """Show the local grid's members and every cloud deployment, with their health.

    For each Node, the "Network" column is what the local Network says of it: online, stale
    (missed heartbeats), offline (left or silent), or not registered.
    """
    from pygrid.cli.deploy import cloud_report, cloud_table
    from pygrid.localgrid import LocalGrid, LocalGridError

    try:
        report = LocalGrid().health()
    except LocalGridError as exc:
        raise fail(exc.message) from None
    cloud = cloud_report()
    if output is OutputFormat.json:
        typer.echo(json.dumps({"local": [h.to_json() for h in report], "cloud": cloud}, indent=2))
        return
    out = _console()
    if cloud:
        out.print(cloud_table(cloud))
    if not report:
        out.print("No local grid is running. Start one with: pygrid up")
        return
    out.print(_health_table(report))
    healthy = sum(h.health == "healthy" for h in report)
    nodes = [h for h in report if h.network_status is not None]
    online = sum(h.network_status == "online" for h in nodes)
    joined = (
        f" {online} of {_plural(len(nodes), 'Node')} online in the Network."
        if online < len(nodes)
        else ""
    )
    if healthy == len(report):
        out.print(f"All {len(report)} members are healthy.{joined}")
    else:
        out.print(
            f"{healthy} of {len(report)} members are healthy;{joined} see their log files under "
            f"{LocalGrid().logs_dir} (restart with: pygrid down && pygrid up)."
        )


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # A pipe gets 80 columns by default, which would fold URLs and paths mid-word.
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


@contextmanager
def _progress() -> Iterator[Callable[[Member, Event], None]]:
    """An ``on_event`` callback: a spinner per member on a terminal, plain lines otherwise."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    err = _console(stderr=True)
    if not err.is_terminal:

        def log(member: Member, event: Event) -> None:
            if member.url is None:
                if event == "started":
                    err.print(f"Started {member.name} (pid {member.pid}), {member.where}")
            elif event == "healthy":
                joined = ", online in the Network" if member.app == "node" else ""
                err.print(f"{member.name} is healthy on {member.url}{joined}")
            else:
                err.print(
                    f"Started {member.name} (pid {member.pid}); waiting for {member.url}/status"
                )

        yield log
        return

    columns = (
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def show(member: Member, event: Event) -> None:
            if event == "started":
                waiting = f"waiting for {member.url}/status" if member.url else "starting"
                tasks[member.name] = progress.add_task(f"{member.name}: {waiting}", total=1)
            else:
                joined = ", online in the Network" if member.app == "node" else ""
                progress.update(
                    tasks[member.name], description=f"{member.name}: healthy{joined}", completed=1
                )

        yield show


def _members_table(members: Sequence[Member]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table("name", "app", "URL", "PID", "log file")
    for member in members:
        pid = str(member.pid) if member.alive else f"{member.pid} (exited)"
        url = member.url or "-"
        table.add_row(escape(member.name), member.app, url, pid, escape(str(member.log)))
    return table


def _health_table(report: Sequence[Health]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    colours = {"healthy": "green", "unhealthy": "yellow", "down": "red"}
    views = {"online": "green", "stale": "yellow", "offline": "red", "not registered": "red"}
    table = Table("name", "app", "URL", "PID", "health", "Network", "version", "uptime")
    for item in report:
        member = item.member
        view = item.network_status
        table.add_row(
            escape(member.name),
            member.app,
            member.url or "-",
            str(member.pid),
            f"[{colours[item.health]}]{item.health}[/]",
            f"[{views[view]}]{view}[/]" if view in views else (view or "-"),
            item.version or "-",
            _duration(item.uptime_seconds),
        )
    return table


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _print_footer(out: Console, grid: LocalGrid) -> None:
    out.print(
        f"Owner credentials (the same on every member): {_escape_path(grid.credentials_file)} (mode 0600)"
    )
    out.print("Check health with: pygrid status    Stop with: pygrid down")


def _escape_path(path: object) -> str:
    from rich.markup import escape

    return escape(str(path))


def _fail_with_log(exc: LocalGridError) -> typer.Exit:
    exit_ = fail(exc.message)
    if exc.log_tail:
        typer.echo("Last lines of its log:", err=True)
        for line in exc.log_tail:
            typer.echo(f"  {line}", err=True)
    return exit_
