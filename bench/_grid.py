"""Shared helpers of the benches: start a real ``pygrid node`` on 127.0.0.1 with a temp data dir,
stop it by PID, sample its peak RSS, and small statistics. No dependence on ``tests/``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

OWNER_EMAIL = "bench@example.org"
OWNER_PASSWORD = "bench-password-1"
MIB = 1024 * 1024


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries only the JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Node:
    """A running ``pygrid node`` (the gunicorn master; its workers are its children)."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        """PID of the gunicorn master."""
        return self.process.pid

    def tail(self, lines: int = 60) -> str:
        """The last lines the Node printed."""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def tracebacks(self) -> list[str]:
        """Every traceback (and the log line before it) in the Node's log."""
        text = self.log.read_text(errors="replace").splitlines()
        found: list[str] = []
        for index, line in enumerate(text):
            if line.startswith("Traceback"):
                end = index + 1
                while end < len(text) and text[end].startswith((" ", "\t")):
                    end += 1
                found.append("\n".join(text[max(0, index - 1) : end + 1]))
        return found


@contextmanager
def node(
    *extra_args: str,
    env: dict[str, str] | None = None,
    keep_log: Path | None = None,
    startup_timeout: float = 90,
    max_content_length: int | None = None,
) -> Iterator[Node]:
    """Start ``pygrid node`` on a free port with a temp data dir; stop it by PID on exit.

    The Owner is ``OWNER_EMAIL`` / ``OWNER_PASSWORD``. With ``keep_log`` the Node's log is copied
    there before the temp dir goes away. ``max_content_length`` sets PYGRID_MAX_CONTENT_LENGTH.
    """
    with tempfile.TemporaryDirectory(prefix="pygrid-bench-") as tmp:
        port = free_port()
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "node.log"
        launcher = ["-m", "pygrid.cli"]
        if max_content_length is not None:
            env = {**(env or {}), "PYGRID_MAX_CONTENT_LENGTH": str(max_content_length)}
        command = [
            sys.executable,
            *launcher,
            "node",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *extra_args,
        ]
        environment = {
            **os.environ,
            "PYGRID_OWNER_EMAIL": OWNER_EMAIL,
            "PYGRID_OWNER_PASSWORD": OWNER_PASSWORD,
            **(env or {}),
        }
        for name in ("DATABASE_URL", "PYGRID_BLOB_URL", "PYGRID_DATA_DIR", "SECRET_KEY"):
            if name not in (env or {}):
                environment.pop(name, None)
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,  # its own process group: stop() signals only it
            )
        server = Node(process, f"http://127.0.0.1:{port}", data_dir, log_path)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"node exited with {process.returncode}:\n{server.tail()}")
                try:
                    if requests.get(f"{server.url}/status", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node did not become healthy:\n{server.tail()}")
                time.sleep(0.1)
            yield server
        except BaseException:
            # keep the evidence: the temp dir (and the log in it) is about to go
            kept = Path(tempfile.gettempdir()) / f"pygrid-bench-node-{process.pid}.log"
            stop(process)
            kept.write_bytes(log_path.read_bytes())
            log(f"the run failed; the Node's log is kept in {kept}; its last lines:")
            log(server.tail(30))
            raise
        finally:
            stop(process)
            if keep_log is not None:
                keep_log.write_bytes(log_path.read_bytes())


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created for ``process`` (by its PID); SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


class RssSampler:
    """Peak of (RSS of a process + RSS of all its descendants), sampled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0  # since the last reset
        self.overall = 0  # since the start
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> int:
        """Current RSS sum in bytes."""
        total = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record(self.sample())
            self.samples += 1
            self._stop.wait(self.interval)

    def _record(self, value: int) -> None:
        self.peak = max(self.peak, value)
        self.overall = max(self.overall, value)

    def reset(self) -> None:
        """Start a new phase: ``peak`` forgets what came before (``overall`` does not)."""
        self.peak = 0
        self._record(self.sample())

    def __enter__(self) -> RssSampler:
        self._record(self.sample())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._record(self.sample())

    @property
    def peak_mb(self) -> float:
        """Peak of this phase in MiB."""
        return round(self.peak / MIB, 1)

    @property
    def overall_mb(self) -> float:
        """Peak since the start in MiB."""
        return round(self.overall / MIB, 1)


class CountingRetry(Retry):
    """urllib3 Retry that counts (process-wide) the requests it had to retry, and why."""

    lock = threading.Lock()
    count = 0
    reasons: dict[str, int] = {}

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        error = kwargs.get("error")
        reason = f"{type(error).__name__}: {error}"[:120] if error is not None else "response"
        with CountingRetry.lock:
            CountingRetry.count += 1
            CountingRetry.reasons[reason] = CountingRetry.reasons.get(reason, 0) + 1
        return super().increment(*args, **kwargs)


def retry_dropped_connections(session: requests.Session) -> requests.Session:
    """Retry a request once (any method) when the connection fails before an answer.

    gunicorn closes a keep-alive connection idle for 2 s; a request sent on it at that moment
    gets "Connection reset by peer" / "Remote end closed connection" and requests does not retry
    a POST by itself. The benches count these retries (``CountingRetry.count``) and report them.
    """
    retry = CountingRetry(
        total=1, connect=1, read=1, status=0, other=0, allowed_methods=None, raise_on_status=False
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def owner_client(url: str) -> Any:
    """A ModelCentricFLClient logged in as the bench's Owner."""
    from pygrid.client import ModelCentricFLClient

    client = ModelCentricFLClient(url, timeout=600)
    retry_dropped_connections(client.http.session)
    client.login(OWNER_EMAIL, OWNER_PASSWORD)
    return client


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rounded(value: float, digits: int = 4) -> float:
    """``round`` that keeps small numbers readable."""
    return round(value, digits)


def wait_for_cycles(
    client: Any, process_id: int, cycles_done: int, timeout: float, poll: float = 0.05
) -> dict[str, Any]:
    """Poll the process status until ``cycles_done`` cycles are closed; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.status(process_id)
        if status["cycles_done"] >= cycles_done:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"process {process_id}: {status['cycles_done']} cycles done after {timeout} s, "
                f"waiting for {cycles_done}"
            )
        time.sleep(poll)
