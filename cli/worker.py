"""``pygrid worker``: a long-running Worker that runs one Node's approved data-centric jobs."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from pygrid.cli.servers import fail

# Exit status when the Node refuses the token: retrying it cannot help. A Worker that read its
# token from a secret store is restarted by systemd and reads the new one the Node published.
EXIT_TOKEN_REFUSED = 2


class SecretCloud(StrEnum):
    """Whose secret store ``--token-from-secret`` reads (pygrid.providers.SECRET_STORES)."""

    local = "local"
    aws = "aws"
    gcp = "gcp"
    azure = "azure"


def worker(
    node: Annotated[
        str,
        typer.Option(
            "--node",
            envvar="PYGRID_NODE",
            help="URL of the Node whose jobs to run, e.g. http://127.0.0.1:5000.",
            show_default=False,
        ),
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="PYGRID_WORKER_TOKEN",
            help="Worker token (pgw_...) from `pygrid worker-token create`. Prefer the "
            "environment variable: a command line is visible to every local user.",
            show_default=False,
        ),
    ] = None,
    token_from_secret: Annotated[
        str | None,
        typer.Option(
            "--token-from-secret",
            envvar="PYGRID_WORKER_TOKEN_SECRET",
            help="Read the worker token from this secret of the cloud's secret store, with this "
            "machine's identity, waiting until the Node has published it (cloud Workers).",
            show_default=False,
        ),
    ] = None,
    cloud: Annotated[
        SecretCloud | None,
        typer.Option(
            "--cloud",
            envvar="PYGRID_CLOUD",
            help="The cloud whose secret store --token-from-secret reads.",
            show_default=False,
        ),
    ] = None,
    secret_timeout: Annotated[
        float,
        typer.Option(
            "--secret-timeout",
            min=0,
            help="Seconds to wait for the token in --token-from-secret; 0 waits for ever.",
        ),
    ] = 0.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=64, help="Jobs to run at the same time.")
    ] = 1,
    memory_mb: Annotated[
        int,
        typer.Option("--memory-mb", min=64, help="Address-space limit of each job, in MiB."),
    ] = 4096,
    cpu_seconds: Annotated[
        int, typer.Option("--cpu-seconds", min=1, help="CPU-time limit of each job, in seconds.")
    ] = 3600,
    wall_seconds: Annotated[
        float,
        typer.Option("--wall-seconds", min=1, help="Wall-clock limit of each job, in seconds."),
    ] = 3600.0,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="Folder for the jobs' private temporary folders (default: the system's temp).",
            show_default=False,
        ),
    ] = None,
    grace_seconds: Annotated[
        float,
        typer.Option(
            "--grace-seconds",
            min=0,
            help="On SIGTERM/Ctrl-C, how long running jobs may finish before they are killed.",
        ),
    ] = 30.0,
    poll_wait: Annotated[
        float,
        typer.Option(
            "--poll-wait",
            min=0,
            max=30,
            help="Seconds each claim waits on the Node for a job to arrive (long poll).",
        ),
    ] = 20.0,
    label: Annotated[
        str | None,
        typer.Option(
            "--label",
            help="Name the Node records for this Worker (default: <hostname>-<pid>).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a Worker: claim approved jobs from a Node, run each in a sandbox, upload the result.

    Runs until SIGTERM or Ctrl-C; a second one kills the running jobs at once.

    Exits with status 2 when the Node refuses the token (revoked, expired, not a worker token).
    """
    url = node.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(
            f"--node must be an http:// or https:// URL, e.g. http://127.0.0.1:5000: {node!r}"
        )
    if token and token_from_secret:
        raise fail("give --token or --token-from-secret, not both")
    if token_from_secret:
        if cloud is None:
            raise fail("--token-from-secret needs --cloud (or PYGRID_CLOUD): aws, gcp or azure")
        token = _token_from_secret(str(cloud), token_from_secret, secret_timeout or None)
    if not token:
        raise fail("give --token (or PYGRID_WORKER_TOKEN), or --token-from-secret")
    if not token.startswith("pgw_"):
        typer.echo(
            "Error: --token is not a worker token (they start with pgw_); "
            "create one with: pygrid worker-token create",
            err=True,
        )
        raise typer.Exit(EXIT_TOKEN_REFUSED)

    from pygrid.apps.worker.agent import TokenRefused, WorkerAgent
    from pygrid.apps.worker.sandbox import Limits

    _configure_logging()
    limits = Limits(memory_mb=memory_mb, cpu_seconds=cpu_seconds, wall_seconds=wall_seconds)
    agent = WorkerAgent(
        url,
        token,
        concurrency=concurrency,
        limits=limits,
        work_dir=work_dir,
        poll_wait=poll_wait,
        label=label,
        grace_seconds=grace_seconds,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            agent.stop(now=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    typer.echo(
        f"PyGrid worker {agent.label!r} serving {url} with {concurrency} slot"
        f"{'s' if concurrency != 1 else ''} (per job: {memory_mb} MiB, {cpu_seconds} s CPU, "
        f"{wall_seconds:g} s wall clock)",
        err=True,
    )
    try:
        agent.run(stop)
    except TokenRefused as exc:
        typer.echo(f"Error: the Node refused the worker token: {exc}", err=True)
        raise typer.Exit(EXIT_TOKEN_REFUSED) from None
    typer.echo("PyGrid worker stopped", err=True)


def _token_from_secret(cloud: str, secret: str, timeout: float | None) -> str:
    """The token the Node published in ``secret``, waited for; a clean error if it never comes."""
    from pygrid.providers.worker_secret import fetch_worker_token

    _configure_logging()
    typer.echo(f"PyGrid worker: reading the worker token from {secret} ({cloud})", err=True)
    try:
        return fetch_worker_token(cloud, secret, timeout=timeout)
    except (TimeoutError, ValueError) as exc:
        raise fail(str(exc)) from None


def _configure_logging() -> None:
    """One timestamped line per event on stderr (the Worker's, and its wait for a token)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("pygrid.worker", "pygrid.providers.worker_secret"):
        logger = logging.getLogger(name)
        if logger.handlers:  # configured already (the token was read from a secret)
            continue
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
