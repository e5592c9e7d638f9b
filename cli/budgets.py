"""``pygrid budget``: how much epsilon each data scientist may spend on a dataset."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.servers import fail
from pygrid.cli.session import EmailOption, NodeOption, PasswordOption

app = typer.Typer(help="Privacy budgets: the epsilon each data scientist may spend per dataset.")


@app.command("set")
def set_budget(
    dataset: Annotated[int, typer.Option("--dataset", help="The dataset's id.")],
    user: Annotated[str, typer.Option("--user", help="The data scientist's email.")],
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Their total epsilon on the dataset.")
    ],
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Set a data scientist's total epsilon on a dataset (what is spent stays spent)."""
    if not math.isfinite(epsilon) or epsilon < 0:
        raise fail(f"--epsilon must be a non-negative number, not {epsilon:g}")
    who = "a user allowed to set budgets (owner or admin)"
    with session.connect(node, email, password, who) as client:
        budget = client.set_budget(dataset, user, epsilon)
    session.console().print(
        f"Budget of {budget['user_email']} on dataset {budget['dataset_id']}: "
        f"ε {session.cell_text(budget['epsilon_limit'])}, "
        f"{session.cell_text(budget['epsilon_spent'])} spent, "
        f"{session.cell_text(budget['epsilon_remaining'])} left"
    )


@app.command("list")
def list_budgets(
    dataset: Annotated[
        int | None, typer.Option("--dataset", help="Only this dataset.", show_default=False)
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user's email.", show_default=False)
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
    ] = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Budgets: everyone's for an owner, your own for a data scientist."""
    with session.connect(node, email, password) as client:
        budgets = client.budgets(dataset, user)
    if fmt == OutputFormat.json:
        session.print_json(budgets)
        return
    session.print_table(
        budgets,
        {
            "dataset": "dataset_id",
            "user": "user_email",
            "ε limit": "epsilon_limit",
            "ε spent": "epsilon_spent",
            "ε left": "epsilon_remaining",
        },
        empty="No budgets: set one with pygrid budget set.",
    )
