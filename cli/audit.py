"""``pygrid audit``: who did what to which dataset and job, newest first."""

from __future__ import annotations

from typing import Annotated

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.session import EmailOption, NodeOption, PasswordOption


def audit(
    dataset: Annotated[
        int | None,
        typer.Option("--dataset", help="Only this dataset's events.", show_default=False),
    ] = None,
    job: Annotated[
        int | None, typer.Option("--job", help="Only this job's events.", show_default=False)
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="Only this action, e.g. job.release.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many events.")] = 100,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Read a Node's data-centric audit log, newest first."""
    who = "a user allowed to read the audit log (owner, admin or compliance officer)"
    with session.connect(node, email, password, who) as client:
        events = client.audit(dataset, job, action, limit)
    if fmt == OutputFormat.json:
        session.print_json(events)
        return
    session.print_table(
        events,
        {
            "id": "id",
            "at (UTC)": lambda e: session.when(e.get("at")),
            "action": "action",
            "actor": "actor",
            "dataset": "dataset_id",
            "job": "job_id",
            "detail": "detail",
        },
        empty="No events match.",
    )
