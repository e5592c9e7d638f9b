"""The ``pygrid`` command. Each command group is a small module registered here.

No torch, Flask, SQLAlchemy or cloud SDK is imported at module level anywhere under this
package, so ``pygrid --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pygrid.cli import (
    audit,
    budgets,
    datasets,
    db,
    demo,
    deploy,
    grid,
    job_requests,
    network_tokens,
    nodes,
    servers,
    worker_tokens,
)
from pygrid.cli import worker as worker_cmd

app = typer.Typer(
    name="pygrid",
    help="PyGrid: privacy-preserving, decentralised data science. Run Nodes, Networks and local grids.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("node")(servers.node)
app.command("network")(servers.network)
app.command("worker")(worker_cmd.worker)
app.command("up")(grid.up)
app.command("down")(grid.down)
app.command("status")(grid.status)
app.command("deploy")(deploy.deploy)
app.command("destroy")(deploy.destroy)
app.command("compose")(deploy.compose)
app.add_typer(db.app, name="db")
app.add_typer(demo.app, name="demo")
app.add_typer(datasets.app, name="dataset")
app.add_typer(job_requests.app, name="requests")
app.add_typer(budgets.app, name="budget")
app.add_typer(worker_tokens.app, name="worker-token")
app.add_typer(network_tokens.app, name="network-token")
app.add_typer(nodes.app, name="nodes")
app.command("audit")(audit.audit)


def _print_version(value: bool) -> None:
    if value:
        import pygrid

        typer.echo(pygrid.__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """PyGrid: privacy-preserving, decentralised data science."""


def main() -> None:
    """Console-script entry point."""
    app()
