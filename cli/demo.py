"""``pygrid demo``: end-to-end demos that drive a running grid as its users would.

``pygrid demo model-centric`` hosts the reference workload (the digits MLP, see
``pygrid.workloads.digits``) on a Node and trains it with simulated devices over HTTP
(``pygrid.simulation``), showing each cycle's test accuracy as the Node closes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pygrid.cli.servers import fail

if TYPE_CHECKING:
    from rich.console import Console

    from pygrid.client.http import GridError
    from pygrid.simulation import CycleRecord

app = typer.Typer(help="Run end-to-end demos against a grid.", no_args_is_help=True)

NO_LOCAL_GRID = "no local grid is running: start one with `pygrid up` or pass --node URL"


@app.command("model-centric")
def model_centric(
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="URL of the Node to train on (default: the first Node of the local grid).",
            show_default=False,
        ),
    ] = None,
    devices: Annotated[
        int, typer.Option("--devices", min=1, help="Simulated devices (an IID split of the data).")
    ] = 10,
    cycles: Annotated[int, typer.Option("--cycles", min=1, help="Training cycles to run.")] = 20,
    email: Annotated[
        str | None,
        typer.Option(
            "--email",
            envvar="PYGRID_EMAIL",
            help="Email of a user allowed to host processes (default with the local grid: its Owner).",
            show_default=False,
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            envvar="PYGRID_PASSWORD",
            help="That user's password (default with the local grid: from its credentials.json).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Name of the hosted FL process.")] = (
        "digits-demo"
    ),
    version: Annotated[
        str,
        typer.Option(
            "--version",
            help="Version of the hosted FL process; 'auto' is a fresh timestamp, so the demo can run again on the same Node.",
        ),
    ] = "auto",
) -> None:
    """Train the digits MLP with simulated devices on a Node, cycle by cycle (FedAvg)."""
    url, email, password = _target(node, email, password)
    if version == "auto":
        # Name and version identify a process (a second host-training gets 409): a fresh
        # version per run lets the demo run again on the same Node.
        version = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]

    from pygrid.client.http import GridError, HttpClient

    # Log in before importing torch: a wrong URL or password is reported in a blink.
    http = HttpClient(url)
    try:
        token = http.login(email, password)
    except GridError as exc:
        if exc.status in (401, 403):
            raise fail(f"{url} refused the login of {email}: {exc.message}") from None
        raise fail(str(exc)) from None
    finally:
        http.close()

    from pygrid.client import ModelCentricFLClient
    from pygrid.simulation import Simulation, reference_configs
    from pygrid.workloads import digits

    out = _console()
    owner = ModelCentricFLClient(url, token)
    process_id: int | None = None
    try:
        data = digits.load()
        if devices > len(data.x_train):
            raise fail(f"--devices must be at most {len(data.x_train)}, the training set's size")
        shards = digits.split_iid(data.x_train, data.y_train, devices)
        client_config, server_config = reference_configs(
            name, version, devices, cycles, max(len(x) for x, _ in shards)
        )
        try:
            hosted = owner.host_federated_training(digits.mlp(), client_config, server_config)
        except GridError as exc:
            raise fail(_refusal(url, name, version, exc)) from None
        process_id = int(hosted["process_id"])
        out.print(
            f"Hosted {name} version {version} on {url} as process {process_id}: "
            f"{devices} devices, {cycles} cycles, FedAvg, {len(data.x_train)} training and "
            f"{len(data.x_test)} test samples."
        )
        accuracy, loss = _evaluate(digits.mlp().state_dict(), data.x_test, data.y_test)
        out.print(f"Before training: test accuracy {accuracy:.4f}, test loss {loss:.4f}")
        simulation = Simulation(url, owner, process_id, name, version, shards)
        started = time.perf_counter()
        with _progress(out, cycles) as advance:
            for _ in range(cycles):
                record = simulation.run_cycle()
                params = owner.retrieve_model(name, version, checkpoint=record.sequence)
                accuracy, loss = _evaluate(params, data.x_test, data.y_test)
                advance(_cycle_line(cycles, record, accuracy, loss))
        elapsed = time.perf_counter() - started
    except GridError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        where = (
            ""
            if process_id is None
            else f"; the process stays on the Node: {_status_url(url, process_id)}"
        )
        typer.echo(f"Interrupted{where}", err=True)
        raise typer.Exit(130) from None
    finally:
        owner.http.close()
    out.print(f"Final test accuracy: {accuracy:.4f} after {cycles} cycles ({elapsed:.1f} s)")
    out.print(
        f"See the process, its cycles and checkpoints: {_status_url(url, process_id)} "
        f"(logged in as {email})"
    )
    out.print(
        f"Retrieve the model: ModelCentricFLClient({url!r}).retrieve_model({name!r}, {version!r})"
    )


def _status_url(url: str, process_id: int) -> str:
    """Where the owner sees a process's cycles and checkpoints."""
    return f"GET {url}/model-centric/processes/{process_id}"


def _cycle_line(cycles: int, record: CycleRecord, accuracy: float, loss: float) -> str:
    """One cycle: its checkpoint's test accuracy and loss, the devices' mean training loss."""
    line = (
        f"cycle {record.sequence:>{len(str(cycles))}}/{cycles}  "
        f"test accuracy {accuracy:.4f}  test loss {loss:.4f}"
    )
    device_loss = record.metrics.get("loss")
    if device_loss is not None:
        line += f"  device loss {device_loss:.4f}"
    return f"{line}  {record.seconds:.2f} s"


def _target(node: str | None, email: str | None, password: str | None) -> tuple[str, str, str]:
    """The Node's URL and the credentials to log in with."""
    if node is not None:
        url = node.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise fail(f"--node must be an http(s) URL such as http://127.0.0.1:5000, not {node!r}")
        if not email or not password:
            raise fail(
                "--node needs a user allowed to host processes: pass --email and --password "
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
    return nodes[0].url, email, password


def _refusal(url: str, name: str, version: str, exc: GridError) -> str:
    """Why the Node did not host the process, in one line."""
    if exc.status == 409:
        return (
            f"{url} already hosts {name} version {version}: pass another --version "
            "(or leave it at auto)"
        )
    if exc.status is None:
        return str(exc)
    detail = f" ({json.dumps(exc.detail)})" if exc.detail else ""
    return f"{url} refused to host {name} version {version}: {exc}{detail}"


def _evaluate(params: dict[str, Any], x: Any, y: Any) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the digits MLP with ``params``."""
    import torch

    from pygrid.workloads import digits

    model = digits.mlp()
    model.load_state_dict(dict(params))
    with torch.no_grad():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
    return float(accuracy), float(loss)


def _console() -> Console:
    from rich.console import Console

    # Soft wrap: URLs and paths stay whole on a narrow terminal and in a pipe (80 columns).
    return Console(highlight=False, soft_wrap=True)


@contextmanager
def _progress(out: Console, total: int) -> Iterator[Callable[[str], None]]:
    """``advance(line)``: print a cycle's line; on a terminal, above a progress bar."""
    if not out.is_terminal:
        yield out.print
        return

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=True) as progress:
        task = progress.add_task("training", total=total)

        def advance(line: str) -> None:
            progress.console.print(line)
            progress.advance(task)

        yield advance
