"""The Worker agent: claims approved jobs from one Node, runs each in the sandbox, reports back.

The protocol is docs/data-centric.md, "Workers". Each of ``concurrency`` slots is a thread that
long-polls ``/claim``; a claimed job gets a heartbeat thread that renews its lease, a fresh 0700
job directory, a sandboxed run, and then its result (or failure) is uploaded. A Worker that loses
a lease kills the job at once and uploads nothing: the Node has handed the job to someone else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pygrid.apps.worker.sandbox import Limits, Outcome, run_job
from pygrid.client.http import GridError, HttpClient

log = logging.getLogger("pygrid.worker")

API = "/data-centric/worker"
# Where each file a job may carry goes in the job directory (the names the runner reads).
FILE_NAMES = {"model": "model.pt", "plan": "plan.pt", "params": "params.safetensors"}
BACKOFF_START = 0.5
BACKOFF_LIMIT = 30.0
DEFAULT_GRACE = 30.0
# Read timeout of every request: longer than the longest claim long-poll (30 s).
HTTP_TIMEOUT = 60.0
CHUNK = 1 << 20
# Job folders are named pygrid-w<agent pid>-job-<job id>-<random>: a Worker that was killed
# cannot remove its own, so the next one started on the same folder does.
JOB_DIR_PREFIX = "pygrid-w"
_JOB_DIR = re.compile(rf"^{JOB_DIR_PREFIX}(\d+)-job-\d+-")


class TokenRefused(Exception):
    """The Node refused the worker token (401/403): revoked, expired or not a worker token."""


class LeaseLost(Exception):
    """The Node answered 409: this Worker no longer holds the job."""


class Interrupted(Exception):
    """The job was dropped or the agent is stopping: give up on the request."""


class Backoff:
    """Delays between retries: 0.5 s, doubling, at most 30 s."""

    def __init__(self, start: float = BACKOFF_START, limit: float = BACKOFF_LIMIT) -> None:
        self.start = start
        self.limit = limit
        self._next = start

    def next(self) -> float:
        """The delay before the next retry."""
        delay = self._next
        self._next = min(self._next * 2, self.limit)
        return delay


@dataclass
class _Job:
    """A job this Worker holds a lease on."""

    id: int
    lease_id: str
    lease_seconds: float
    # Set when the lease is lost or the agent gives up on the job: upload nothing.
    dropped: threading.Event = field(default_factory=threading.Event)
    # Set when the slot is done with the job (reported, dropped or crashed).
    done: threading.Event = field(default_factory=threading.Event)
    # The sandboxed runner's pid (its process group's id) while run_job runs, else None.
    runner_pid: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerAgent:
    """Claims jobs from the Node at ``node_url`` with a worker token and runs them.

    ``run(stop_event)`` serves until the event is set or ``stop()`` is called, then lets the
    running jobs finish for up to ``grace_seconds`` and kills the rest (their leases run out and
    the Node requeues them). It raises TokenRefused when the Node refuses the token.
    """

    def __init__(
        self,
        node_url: str,
        token: str,
        concurrency: int = 1,
        limits: Limits | None = None,
        work_dir: Path | None = None,
        poll_wait: float = 20.0,
        label: str | None = None,
        grace_seconds: float = DEFAULT_GRACE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.node_url = node_url.rstrip("/")
        self.token = token
        self.concurrency = concurrency
        self.limits = limits if limits is not None else Limits()
        self.work_dir = work_dir
        self.poll_wait = min(max(poll_wait, 0.0), 30.0)
        self.label = label or f"{socket.gethostname()}-{os.getpid()}"
        self.grace_seconds = grace_seconds
        self._stopping = threading.Event()  # claim nothing more
        self._hurry = threading.Event()  # skip (the rest of) the grace period
        self._killed = threading.Event()  # every slot gives up at once
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._refused: str | None = None
        self._unreachable = False

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Serve until ``stop_event`` is set or ``stop()`` is called; TokenRefused on a 401."""
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in sweep_job_dirs(self.work_dir):
            log.warning("removed %s, left behind by a Worker that was killed", leftover)
        for slot in range(self.concurrency):
            # Daemons: a slot idle in a long-poll is abandoned when the agent returns.
            threading.Thread(
                target=self._serve, name=f"pygrid-worker-{slot + 1}", daemon=True
            ).start()
        while not self._stopping.wait(0.2):
            if stop_event is not None and stop_event.is_set():
                break
        self._stopping.set()
        self._drain()
        if self._refused is not None:
            raise TokenRefused(self._refused)

    def stop(self, now: bool = False) -> None:
        """Claim nothing more; with ``now``, kill running jobs instead of waiting for them."""
        self._stopping.set()
        if now:
            self._hurry.set()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_seconds
        if self._running() and self.grace_seconds > 0 and not self._hurry.is_set():
            log.info(
                "stopping: waiting up to %g s for %d running job(s)",
                self.grace_seconds,
                len(self._running()),
            )
        while self._running() and time.monotonic() < deadline:
            self._hurry.wait(0.2)
            if self._hurry.is_set():
                break
        left = self._running()
        self._killed.set()
        for job in left:
            log.warning("job %s: killed on stop; the Node will requeue it", job.id)
            self._drop(job)
        for job in left:
            # Killed runners exit at once; this waits for their folders to be removed.
            job.done.wait(30.0)

    def _running(self) -> list[_Job]:
        with self._lock:
            return [job for job in self._jobs.values() if not job.done.is_set()]

    def _refuse(self, exc: TokenRefused) -> None:
        """The token is no good: stop everything, kill every job."""
        with self._lock:
            if self._refused is None:
                self._refused = str(exc)
        self.stop(now=True)

    # -- one slot ----------------------------------------------------------------------------

    def _client(self) -> HttpClient:
        return HttpClient(self.node_url, self.token, timeout=HTTP_TIMEOUT)

    def _serve(self) -> None:
        """One slot: claim a job, run it, report it; again until the agent stops."""
        client = self._client()
        backoff = Backoff()
        try:
            while not self._stopping.is_set():
                try:
                    response = self._call(
                        client,
                        "POST",
                        f"{API}/claim",
                        until=(self._stopping,),
                        json={"wait": self.poll_wait, "worker": self.label},
                    )
                    if response.status_code == 200:
                        self._work(client, response.json())
                    backoff = Backoff()
                except (TokenRefused, Interrupted):
                    raise
                except Exception:
                    # A bug or a Node answering nonsense must not end the slot: log, wait, go on.
                    log.exception("unexpected error in a worker slot; going on")
                    if _wait_any((self._stopping,), backoff.next()):
                        return
        except TokenRefused as exc:
            self._refuse(exc)
        except Interrupted:
            pass
        finally:
            client.close()

    def _work(self, client: HttpClient, claim: dict[str, Any]) -> None:
        """Fetch, run and report one claimed job; the job directory never outlives this call."""
        job = _Job(int(claim["job_id"]), str(claim["lease_id"]), float(claim["lease_seconds"]))
        spec = claim.get("spec") or {}
        log.info("claimed job %s (%s, dataset %s)", job.id, claim["kind"], spec.get("dataset_id"))
        with self._lock:
            self._jobs[job.id] = job
        threading.Thread(
            target=self._heartbeat, args=(job,), name=f"pygrid-heartbeat-{job.id}", daemon=True
        ).start()
        job_dir: Path | None = None
        try:
            # mkdtemp makes the folder 0700: the private data is readable by this user only.
            prefix = f"{JOB_DIR_PREFIX}{os.getpid()}-job-{job.id}-"
            job_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=self.work_dir))
            self._fetch(client, job, claim, job_dir)
            outcome = self._execute(job, job_dir)
            self._report(client, job, outcome)
        except LeaseLost:
            log.warning("job %s: the Node took the lease back; nothing was uploaded", job.id)
        except Interrupted:
            if not self._killed.is_set():
                log.warning("job %s: dropped; nothing was uploaded", job.id)
        except GridError as exc:
            # A refusal the protocol does not foresee (e.g. 404): leave it to the lease.
            log.warning("job %s: the Node refused a request (%s); dropped", job.id, exc)
            self._drop(job)
        except TokenRefused:
            raise
        except Exception:
            log.exception("job %s: unexpected error; dropped", job.id)
            self._drop(job)
        finally:
            # The private data goes before the job counts as done: a stopping agent waits for
            # ``done`` and then exits, abandoning this (daemon) thread mid-cleanup otherwise.
            if job_dir is not None:
                shutil.rmtree(job_dir, ignore_errors=True)
            with self._lock:
                self._jobs.pop(job.id, None)
            job.done.set()

    def _heartbeat(self, job: _Job) -> None:
        """Renew the lease every lease_seconds / 3 until the job is done; kill it if lost."""
        client = self._client()
        interval = max(job.lease_seconds / 3, 0.2)
        try:
            while not job.done.wait(interval):
                self._call(
                    client,
                    "POST",
                    f"{API}/jobs/{job.id}/heartbeat",
                    until=(job.done, job.dropped, self._killed),
                    json={"lease_id": job.lease_id},
                )
        except LeaseLost:
            if not job.done.is_set():
                log.warning("job %s: lease lost; killing it", job.id)
                self._drop(job)
        except TokenRefused as exc:
            self._drop(job)
            self._refuse(exc)
        except GridError as exc:
            log.warning("job %s: heartbeat refused (%s); the lease will run out", job.id, exc)
        except Interrupted:
            pass
        finally:
            client.close()

    # -- the steps of a job ------------------------------------------------------------------

    def _fetch(self, client: HttpClient, job: _Job, claim: dict[str, Any], job_dir: Path) -> None:
        """The data, the job's files and job.json into ``job_dir``."""
        self._download(client, job, f"{API}/jobs/{job.id}/data", job_dir / "data.safetensors")
        for name in claim.get("files") or ():
            target = FILE_NAMES.get(name)
            if target is None:
                log.warning("job %s: ignoring the unknown file %r", job.id, name)
                continue
            self._download(client, job, f"{API}/jobs/{job.id}/files/{name}", job_dir / target)
        described = {key: claim.get(key) for key in ("kind", "spec", "schema")}
        (job_dir / "job.json").write_text(json.dumps({"job_id": job.id, **described}))

    def _download(self, client: HttpClient, job: _Job, path: str, target: Path) -> None:
        backoff = Backoff()
        until = (job.dropped, self._killed)
        while True:
            response = self._call(
                client, "GET", path, until=until, params={"lease_id": job.lease_id}, stream=True
            )
            try:
                with response, target.open("wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                return
            except requests.RequestException as exc:
                self._note_unreachable(f"{exc.__class__.__name__} while downloading")
                if _wait_any(until, backoff.next()):
                    raise Interrupted from None

    def _execute(self, job: _Job, job_dir: Path) -> Outcome:
        if job.dropped.is_set():
            raise Interrupted

        def started(pid: int) -> None:
            with job.lock:
                job.runner_pid = pid
            if job.dropped.is_set():  # dropped between the check above and the start
                self._drop(job)

        try:
            outcome = run_job(job_dir, self.limits, on_start=started)
        finally:
            with job.lock:
                job.runner_pid = None
        if job.dropped.is_set():
            raise Interrupted
        return outcome

    def _report(self, client: HttpClient, job: _Job, outcome: Outcome) -> None:
        until = (job.dropped, self._killed)
        if outcome.ok:
            try:
                self._call(
                    client,
                    "POST",
                    f"{API}/jobs/{job.id}/result",
                    until=until,
                    upload=outcome.result_path,
                    data={"lease_id": job.lease_id, "metrics": json.dumps(outcome.metrics)},
                )
                log.info("job %s finished in %.1f s", job.id, outcome.seconds)
                return
            except GridError as exc:
                # e.g. 413 or 422: the result itself is refused, so the job has failed.
                outcome = Outcome(
                    ok=False,
                    metrics={},
                    result_path=None,
                    error=f"the Node refused the result: {exc.message}",
                    seconds=outcome.seconds,
                )
        error = outcome.error or "the job failed"
        self._call(
            client,
            "POST",
            f"{API}/jobs/{job.id}/fail",
            until=until,
            json={"lease_id": job.lease_id, "error": error},
        )
        last_line = (error.strip().splitlines() or [error])[-1]
        log.warning("job %s failed after %.1f s: %s", job.id, outcome.seconds, last_line)

    def _drop(self, job: _Job) -> None:
        """Give up on ``job``: nothing will be uploaded, and its sandbox dies now."""
        job.dropped.set()
        # The pid is cleared as soon as run_job returns, and run_job reaps the runner only just
        # before: the group killed is the runner's, not a stranger's that reused its pid.
        with job.lock:
            if job.runner_pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.runner_pid, signal.SIGKILL)

    # -- HTTP --------------------------------------------------------------------------------

    def _call(
        self,
        client: HttpClient,
        method: str,
        path: str,
        *,
        until: Sequence[threading.Event],
        upload: Path | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send until the Node answers, retrying network errors and 5xx with backoff.

        TokenRefused on 401/403, LeaseLost on 409, GridError on any other 4xx, Interrupted
        when one of ``until`` is set while waiting to retry.
        """
        backoff = Backoff()
        while True:
            if any(event.is_set() for event in until):
                raise Interrupted
            try:
                with contextlib.ExitStack() as stack:
                    if upload is not None:
                        # Opened afresh for every attempt: a failed one has consumed it.
                        handle = stack.enter_context(upload.open("rb"))
                        kwargs["files"] = {"result": ("result.safetensors", handle)}
                    response = client.request(method, path, **kwargs)
                self._note_reachable()
                return response
            except GridError as exc:
                if exc.status in (401, 403):
                    raise TokenRefused(exc.message) from None
                if exc.status == 409:
                    raise LeaseLost(exc.message) from None
                if exc.status is not None and exc.status < 500:
                    raise
                self._note_unreachable(_why(exc))
            if _wait_any(until, backoff.next()):
                raise Interrupted

    def _note_unreachable(self, why: str) -> None:
        with self._lock:
            first, self._unreachable = not self._unreachable, True
        if first:
            log.warning(
                "cannot reach the Node at %s (%s); retrying, at most %g s apart",
                self.node_url,
                why,
                BACKOFF_LIMIT,
            )

    def _note_reachable(self) -> None:
        with self._lock:
            back, self._unreachable = self._unreachable, False
        if back:
            log.info("the Node at %s answers again", self.node_url)


def _why(exc: GridError) -> str:
    """A network error's class (ConnectionError, ReadTimeout), or the Node's 5xx answer."""
    if exc.status is not None:
        return f"it answered {exc}"
    return exc.__cause__.__class__.__name__ if exc.__cause__ is not None else exc.message


def _wait_any(events: Sequence[threading.Event], seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as one of ``events`` is set."""
    deadline = time.monotonic() + seconds
    while True:
        if any(event.is_set() for event in events):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        events[0].wait(min(left, 0.1))


def sweep_job_dirs(work_dir: Path | None) -> list[Path]:
    """Remove the job folders in ``work_dir`` (default: the temp folder) whose Worker is dead."""
    parent = Path(work_dir if work_dir is not None else tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _JOB_DIR.match(entry.name)
            if match is None or not entry.is_dir() or _alive(int(match.group(1))):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
