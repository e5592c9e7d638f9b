"""``pygrid demo``: end-to-end demos that drive a running grid as its users would.

``pygrid demo model-centric`` hosts the reference workload (the digits MLP, see
``pygrid.workloads.digits``) on a Node and trains it with simulated devices over HTTP
(``pygrid.simulation``), showing each cycle's test accuracy as the Node closes it.

``pygrid demo data-centric`` tells the data-centric story (docs/data-centric.md): the Owner
shares the digits training set, a data scientist finds it, trains the same MLP on it with
DP-SGD without seeing a row, the Owner approves and signs off, a Worker runs the job, and the
data scientist tests the released weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pygrid.cli import session
from pygrid.cli.servers import fail

if TYPE_CHECKING:
    from rich.console import Console

    from pygrid.client.http import GridError
    from pygrid.simulation import CycleRecord

app = typer.Typer(help="Run end-to-end demos against a grid.", no_args_is_help=True)


@app.command("model-centric")
def model_centric(
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            envvar="PYGRID_NODE",
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
    url, email, password = session.target(node, email, password, "a user allowed to host processes")
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
        raise session.login_failure(url, email, exc) from None
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


#: The demo's dataset on the Node, and the tags a data scientist finds it by.
DIGITS_DATASET = "digits"
DIGITS_TAGS = ("digits", "images")
#: DP-SGD hyper-parameters of the demo's training job (MLP 64-64-10 on 1500 digits); tuned so
#: that epsilon 3, delta 1e-5 reaches a test accuracy of 0.80 or more.
DP_TRAIN: dict[str, Any] = {
    "epochs": 15,
    "batch_size": 256,
    "lr": 0.5,
    "loss": "cross_entropy",
    "optimizer": "sgd",
}
DP_DELTA = 1e-5
DP_MAX_GRAD_NORM = 1.0
#: Seconds an approved job may wait in the queue before the demo says how to start a Worker.
CLAIM_HINT_SECONDS = 20.0
DATA_CENTRIC_STEPS = 8


@app.command("data-centric")
def data_centric(
    node: session.NodeOption = None,
    email: Annotated[
        str | None,
        typer.Option(
            "--email",
            envvar="PYGRID_EMAIL",
            help="Email of the Node's Owner or an admin (default with the local grid: its Owner).",
            show_default=False,
        ),
    ] = None,
    password: session.PasswordOption = None,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="The privacy cost (epsilon) the training may have.")
    ] = 3.0,
    budget: Annotated[
        float,
        typer.Option("--budget", help="The data scientist's total epsilon on the dataset."),
    ] = 10.0,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds to wait for a Worker to finish the job."),
    ] = 900,
) -> None:
    """Train on data that never leaves the Node: the Owner shares digits, a data scientist
    trains the MLP with differential privacy, the Owner approves and releases the result."""
    if not (0 < epsilon < float("inf")):
        raise fail(f"--epsilon must be a positive number, not {epsilon:g}")
    if not (epsilon <= budget < float("inf")):
        raise fail(f"--budget ({budget:g}) must be at least --epsilon ({epsilon:g})")
    url, email, password = session.target(
        node, email, password, "the Node's Owner or an admin (to share data and create a user)"
    )

    from pygrid.client.data_centric import DataCentricClient
    from pygrid.client.http import GridError

    owner = DataCentricClient(url)
    try:
        owner.login(email, password)
    except GridError as exc:
        owner.close()
        raise session.login_failure(url, email, exc) from None

    out = _console()
    story = _DataCentricStory(out, owner, epsilon, budget, timeout)
    try:
        story.run()
    except GridError as exc:
        raise fail(session.describe(exc)) from None
    except TimeoutError as exc:
        raise fail(f"{exc}; it stays on the Node: pygrid requests list --state all") from None
    except KeyboardInterrupt:
        where = "" if story.job_id is None else f"; job {story.job_id} stays on the Node"
        typer.echo(f"Interrupted{where}", err=True)
        raise typer.Exit(130) from None
    finally:
        story.close()


class _DataCentricStory:
    """The data-centric demo, one method per step, as the Owner and a data scientist."""

    def __init__(
        self, out: Console, owner: Any, epsilon: float, budget: float, timeout: float
    ) -> None:
        self.out = out
        self.owner = owner
        self.scientist: Any = None
        self.epsilon = epsilon
        self.budget = budget
        self.timeout = timeout
        self.job_id: int | None = None
        self.step = 0

    def close(self) -> None:
        self.owner.close()
        if self.scientist is not None:
            self.scientist.close()

    def run(self) -> None:
        from pygrid.workloads import digits

        data = digits.load()
        dataset = self.share(data)
        scientist_email = self.invite(dataset)
        before = self.explore(dataset)
        job = self.submit(dataset)
        self.review(job)
        job = self.train(job)
        self.sign_off(job)
        self.evaluate(job, dataset, data, before, scientist_email)

    def say(self, title: str) -> None:
        from rich.markup import escape

        self.step += 1
        self.out.print(f"[bold]{self.step}/{DATA_CENTRIC_STEPS} {escape(title)}[/bold]")

    def note(self, line: str) -> None:
        from rich.markup import escape

        self.out.print(f"    {escape(line)}")

    def share(self, data: Any) -> dict[str, Any]:
        """The Owner uploads the digits training set (NPZ: x, y), unless it is there already."""
        import io

        import numpy as np

        self.say(f"Owner: share the digits training set on {self.owner.url}")
        existing = [d for d in self.owner.datasets() if d["name"] == DIGITS_DATASET]
        if existing:
            dataset: dict[str, Any] = existing[0]
            self.note(f"dataset {dataset['id']} {DIGITS_DATASET!r} is already on the Node")
        else:
            buffer = io.BytesIO()
            np.savez(buffer, x=data.x_train.numpy(), y=data.y_train.numpy())
            dataset = self.owner.upload_dataset(
                buffer.getvalue(),
                name=DIGITS_DATASET,
                tags=DIGITS_TAGS,
                description="8x8 handwritten digits scaled to [0, 1] (scikit-learn), labels 0-9",
                target="y",
                fmt="npz",
            )
            self.note(f"uploaded dataset {dataset['id']} {DIGITS_DATASET!r}")
        schema = dataset.get("schema") or {}
        self.note(
            f"{schema.get('rows')} private rows stay on the Node; data scientists see the schema "
            f"({_columns(schema)}) and a mock sample"
        )
        return dataset

    def invite(self, dataset: dict[str, Any]) -> str:
        """The Owner creates a data scientist and gives them an epsilon budget on the dataset."""
        import secrets

        self.say("Owner: invite a data scientist and give them a privacy budget")
        email = f"scientist-{secrets.token_hex(4)}@pygrid.local"
        password = secrets.token_urlsafe(12)
        self.owner.http.json(
            "POST",
            "/users",
            json={
                "email": email,
                "password": password,
                "role": "data_scientist",
                "name": "Demo data scientist",
            },
        )
        self.note(f"created {email} (role data_scientist) with password {password}")
        self.owner.set_budget(dataset, email, self.budget)
        self.note(f"budget on dataset {dataset['id']}: epsilon {self.budget:g}")

        from pygrid.client.data_centric import DataCentricClient

        self.scientist = DataCentricClient(self.owner.url)
        self.scientist.login(email, password)
        return email

    def explore(self, dataset: dict[str, Any]) -> float:
        """The data scientist finds the dataset by tag and downloads its mock; returns the budget left."""
        self.say("Data scientist: search by tag, download the mock sample")
        found = self.scientist.search(tags=DIGITS_TAGS)
        names = ", ".join(f"{d['id']} {d['name']!r}" for d in found)
        self.note(f"search tags={','.join(DIGITS_TAGS)}: {len(found)} dataset(s): {names}")
        if not any(d["id"] == dataset["id"] for d in found):
            raise fail(f"the search did not find dataset {dataset['id']}")
        mock = self.scientist.mock(dataset)
        shapes = ", ".join(
            f"{name} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
            for name, t in mock.items()
        )
        self.note(f"mock sample (synthetic, no real row): {shapes}")
        return self.budget_left(dataset)

    def budget_left(self, dataset: dict[str, Any]) -> float:
        budgets = self.scientist.budgets(dataset)
        return float(budgets[0]["epsilon_remaining"]) if budgets else 0.0

    def submit(self, dataset: dict[str, Any]) -> dict[str, Any]:
        """The data scientist submits the MLP for DP-SGD training."""
        from pygrid.workloads import digits

        self.say(f"Data scientist: submit a DP training job (epsilon {self.epsilon:g})")
        job: dict[str, Any] = self.scientist.submit_job(
            dataset,
            "train",
            model=digits.mlp(),
            features=["x"],
            target="y",
            train=DP_TRAIN,
            privacy={
                "epsilon": self.epsilon,
                "delta": DP_DELTA,
                "max_grad_norm": DP_MAX_GRAD_NORM,
            },
        )
        self.job_id = int(job["id"])
        train = ", ".join(f"{k} {v}" for k, v in DP_TRAIN.items())
        self.note(f"job {job['id']}: {job['state']}; MLP 64-64-10, {train}")
        self.note(
            f"the Node's accountant puts its cost at epsilon {_number(job.get('epsilon'))}, "
            f"delta {_number(job.get('delta'))}"
        )
        return job

    def review(self, job: dict[str, Any]) -> None:
        """The Owner sees the pending job (who, what code, what cost) and approves it."""
        self.say("Owner: review and approve the job")
        pending = {j["id"]: j for j in self.owner.pending()}
        if job["id"] not in pending:
            raise fail(f"job {job['id']} is not pending review")
        seen = pending[job["id"]]
        budget = seen.get("budget") or {}
        ops = seen.get("ops") or []
        self.note(
            f"{seen.get('requester_email')} asks to {seen.get('kind')} on "
            f"{seen.get('dataset_name')!r}: {len(ops)} TorchScript operators "
            f"({', '.join(ops[:6])}{', ...' if len(ops) > 6 else ''}), "
            f"epsilon {_number(seen.get('epsilon'))} of {_number(budget.get('remaining'))} left"
        )
        self.owner.approve(job, reason="DP-SGD on the MLP, within the budget")
        self.note(f"approved: job {job['id']} is queued for a Worker")

    def train(self, job: dict[str, Any]) -> dict[str, Any]:
        """Wait for a Worker to claim and finish the job; say how to start one if none does."""
        import contextlib

        self.say("Worker: train on the private data")
        approved = time.monotonic()
        state = {"last": "", "hinted": False}
        # A spinner on a terminal; a pipe gets the state changes as lines only.
        spinner = self.out.status(f"job {job['id']}: queued") if self.out.is_terminal else None

        def progress(current: dict[str, Any]) -> None:
            if current["state"] != state["last"]:
                state["last"] = current["state"]
                line = f"job {current['id']}: {current['state']}"
                if current.get("attempts"):
                    line += f" (attempt {current['attempts']})"
                if spinner is not None:
                    spinner.update(line)
                self.note(line)
            waited = time.monotonic() - approved
            if current["state"] == "queued" and not state["hinted"] and waited > CLAIM_HINT_SECONDS:
                state["hinted"] = True
                self.note(
                    f"no Worker has claimed the job after {CLAIM_HINT_SECONDS:g} s: start one with "
                    "`pygrid up --workers 1` (local grid) or `pygrid worker --node "
                    f"{self.owner.url} --token TOKEN` (TOKEN from `pygrid worker-token create`)"
                )

        with spinner or contextlib.nullcontext():
            done: dict[str, Any] = self.owner.wait(
                job, timeout=self.timeout, until=("finished", "released"), on_progress=progress
            )
        metrics = done.get("metrics") or {}
        shown = ", ".join(f"{k} {_number(v)}" for k, v in metrics.items())
        self.note(f"finished{f': {shown}' if shown else ''}")
        return done

    def sign_off(self, job: dict[str, Any]) -> None:
        """The Owner releases the result, which charges the data scientist's budget."""
        self.say("Owner: sign off the result")
        if job["state"] == "released":
            self.note("the dataset's auto-release rule released it already")
            return
        released = self.owner.release(job)
        budget = released.get("budget") or {}
        self.note(
            f"released job {job['id']}: epsilon {_number(released.get('epsilon'))} charged, "
            f"{_number(budget.get('remaining'))} left"
        )

    def evaluate(
        self,
        job: dict[str, Any],
        dataset: dict[str, Any],
        data: Any,
        before: float,
        scientist_email: str,
    ) -> None:
        """The data scientist downloads the trained weights and tests them on held-out digits."""
        from pygrid.workloads import digits

        self.say("Data scientist: download the trained weights and test them")
        self.scientist.wait(job, timeout=60, until=("released",))
        model = self.scientist.result(job, model=digits.mlp())
        accuracy, loss = _evaluate(model.state_dict(), data.x_test, data.y_test)
        after = self.budget_left(dataset)
        self.out.print(
            f"Test accuracy: {accuracy:.4f} (loss {loss:.4f}) on {len(data.y_test)} held-out "
            f"digits, trained with epsilon {self.epsilon:g}, delta {DP_DELTA:g}"
        )
        self.out.print(
            f"Budget of {scientist_email} on dataset {dataset['id']}: epsilon {before:g} left "
            f"before, {after:g} left after"
        )
        self.out.print(f"See what happened: pygrid audit --job {job['id']} --node {self.owner.url}")


def _columns(schema: dict[str, Any]) -> str:
    parts = []
    for column in schema.get("columns") or []:
        shape = column.get("shape") or []
        parts.append(f"{column.get('name')} {column.get('dtype')}{list(shape) if shape else ''}")
    return ", ".join(parts)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


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
