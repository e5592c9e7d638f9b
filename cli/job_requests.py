"""``pygrid requests``: review data scientists' jobs: list, approve, deny, release results."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.servers import fail
from pygrid.cli.session import EmailOption, NodeOption, PasswordOption

app = typer.Typer(help="Review jobs on a Node's datasets: approve, deny, release results.")

REVIEWER = "a reviewer (owner, admin or compliance officer)"
JobId = Annotated[int, typer.Argument(help="The job's id (see pygrid requests list).")]


class State(StrEnum):
    """Which jobs ``list`` shows."""

    pending_review = "pending_review"
    queued = "queued"
    running = "running"
    finished = "finished"
    released = "released"
    denied = "denied"
    failed = "failed"
    cancelled = "cancelled"
    all = "all"


@app.command("list")
def list_requests(
    state: Annotated[
        State, typer.Option("--state", help="Only jobs in this state, or all of them.")
    ] = State.pending_review,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Jobs to review: who asks, on which dataset, what the code does, what it costs."""
    with session.connect(node, email, password, REVIEWER) as client:
        jobs = client.jobs(state=None if state == State.all else state.value)
    if fmt == OutputFormat.json:
        session.print_json(jobs)
        return
    where = "" if state == State.all else f" in state {state.value}"
    session.print_table(
        jobs,
        {
            "job": "id",
            "who": "requester_email",
            "dataset": lambda j: f"{j.get('dataset_name')} ({j.get('dataset_id')})",
            "kind": "kind",
            "state": "state",
            "ops": lambda j: len(j.get("ops") or []),
            "ε": "epsilon",
            "budget left": lambda j: (j.get("budget") or {}).get("remaining"),
            "created (UTC)": lambda j: session.when(j.get("created_at")),
        },
        empty=f"No jobs{where}.",
    )


@app.command("approve")
def approve(
    job_id: JobId,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (kept in the job and the audit log).")
    ] = "",
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Approve a pending job: a Worker runs it next."""
    with session.connect(node, email, password, REVIEWER) as client:
        job = client.approve(job_id, reason)
    session.console().print(f"Approved job {job_id} ({_about(job)}): now {job.get('state')}")


@app.command("deny")
def deny(
    job_id: JobId,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the data scientist.")],
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Deny a pending job, saying why."""
    if not reason.strip():
        raise fail("--reason must say why the job is denied")
    with session.connect(node, email, password, REVIEWER) as client:
        job = client.deny(job_id, reason)
    session.console().print(f"Denied job {job_id} ({_about(job)}): {reason}")


@app.command("release")
def release(
    job_id: JobId,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Sign off a finished result: charge the data scientist's budget and release it."""
    who = "a user allowed to release results (owner or admin)"
    with session.connect(node, email, password, who) as client:
        job = client.release(job_id)
    budget = job.get("budget") or {}
    cost = job.get("epsilon")
    charged = "no privacy cost" if cost is None else f"ε {session.cell_text(cost)} charged"
    left = f", {session.cell_text(budget.get('remaining'))} left" if budget else ""
    session.console().print(f"Released job {job_id} ({_about(job)}): {charged}{left}")


def _about(job: dict[str, Any]) -> str:
    return f"{job.get('kind')} on {job.get('dataset_name')} by {job.get('requester_email')}"
