"""The ``pygrid`` command. Each command group is a small module registered here.

No torch, Flask, SQLAlchemy or cloud SDK is imported at module level anywhere under this
package, so ``pygrid --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pygrid.cli import db, demo, deploy, grid, servers

app = typer.Typer(
    name="pygrid",
    help="PyGrid: privacy-preserving, decentralised data science. Run Nodes, Networks and local grids.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("node")(servers.node)
app.command("network")(servers.network)
app.command("up")(grid.up)
app.command("down")(grid.down)
app.command("status")(grid.status)
app.command("deploy")(deploy.deploy)
app.command("destroy")(deploy.destroy)
app.command("compose")(deploy.compose)
app.add_typer(db.app, name="db")
app.add_typer(demo.app, name="demo")


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
