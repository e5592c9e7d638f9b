"""The Worker queue: claims with leases, heartbeats, results, and requeueing lost jobs.

A claim hands out a fresh random ``lease_id``; every later Worker call must present it, and
every state change is a compare-and-set on ``(state, lease_id)``. So a Worker whose lease ran
out (and whose job went back to the queue, maybe to another Worker) can no longer touch it.

On PostgreSQL the claim locks the oldest queued row with ``FOR UPDATE SKIP LOCKED``, so
concurrent Workers take different jobs without waiting on each other. SQLite has one writer at
a time: the claim is a single compare-and-set ``UPDATE`` that SQLite serialises.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pygrid.data_centric import audit
from pygrid.data_centric.jobs import auto_release
from pygrid.db.models import Dataset, Job, WorkerToken, utcnow
from pygrid.errors import Conflict, InvalidInput, NotFound
from pygrid.storage import BlobStore

MAX_ATTEMPTS = 3
SQLITE_CLAIM_TRIES = 20


class LeaseLost(Conflict):
    """The Worker no longer holds this job (its lease ran out, or it never held it)."""

    code = "lease_lost"


class QueueSignal:
    """Wakes this process's long-polling claims when a job is queued here (other replicas poll)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        """A job was queued."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, timeout: float) -> None:
        """Sleep until ``notify`` or ``timeout``."""
        with self._condition:
            generation = self._generation
            self._condition.wait_for(lambda: self._generation != generation, timeout)


def result_key(job_id: int, lease_id: str) -> str:
    """Per-lease key: a late upload from a lost Worker can never overwrite the real result."""
    return f"jobs/{job_id}/result-{lease_id}.safetensors"


def requeue_expired(session: Session) -> list[int]:
    """Send jobs whose lease ran out back to the queue (or fail them after MAX_ATTEMPTS)."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.lease_id, Job.attempts, Job.dataset_id).where(
            Job.state == "running", Job.lease_expires_at < now
        )
    ).all()
    moved = []
    for job_id, lease_id, attempts, dataset_id in expired:
        give_up = attempts >= MAX_ATTEMPTS
        values: dict[str, Any] = {"lease_id": None, "lease_expires_at": None}
        if give_up:
            values |= {
                "state": "failed",
                "finished_at": now,
                "error": f"lost its Worker {attempts} times (lease expired); not retried",
            }
        else:
            values |= {"state": "queued"}
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "running", Job.lease_id == lease_id)
            .values(**values)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            action = "job.fail" if give_up else "job.requeue"
            audit.record(
                session,
                action,
                None,
                dataset_id=dataset_id,
                job_id=job_id,
                reason="lease expired",
                attempts=attempts,
            )
            moved.append(job_id)
    session.commit()
    return moved


def _lease_values(token: WorkerToken, label: str | None, lease_seconds: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "state": "running",
        "lease_id": secrets.token_hex(16),
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "worker_token_id": token.id,
        "worker_label": label,
        "attempts": Job.attempts + 1,
        "started_at": now,
    }


def _claim_postgres(
    session: Session, token: WorkerToken, label: str | None, lease: float
) -> int | None:
    job_id = session.scalar(
        select(Job.id)
        .where(Job.state == "queued")
        .order_by(Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if job_id is None:
        session.rollback()
        return None
    session.execute(
        update(Job).where(Job.id == job_id).values(**_lease_values(token, label, lease))
    )
    return job_id


def _claim_sqlite(
    session: Session, token: WorkerToken, label: str | None, lease: float
) -> int | None:
    for _ in range(SQLITE_CLAIM_TRIES):
        job_id = session.scalar(
            select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1)
        )
        if job_id is None:
            session.rollback()
            return None
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(**_lease_values(token, label, lease))
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return job_id
        session.rollback()  # another replica took it between the read and the write
    return None


def touch_token(session: Session, token: WorkerToken, label: str | None) -> None:
    """Record that the Worker asked for work (once per claim request, not per poll)."""
    token.last_seen = utcnow()
    token.last_label = label
    session.commit()


def claim_job(
    session: Session, token: WorkerToken, label: str | None, lease_seconds: float
) -> Job | None:
    """Lease the oldest queued job to this Worker, or None when the queue is empty."""
    requeue_expired(session)
    if session.get_bind().dialect.name == "postgresql":
        job_id = _claim_postgres(session, token, label, lease_seconds)
    else:
        job_id = _claim_sqlite(session, token, label, lease_seconds)
    if job_id is None:
        return None
    job = session.get(Job, job_id)
    assert job is not None
    session.refresh(job)
    audit.record(
        session,
        "job.claim",
        token,
        dataset_id=job.dataset_id,
        job_id=job.id,
        worker=label,
        attempt=job.attempts,
    )
    session.commit()
    return job


def held_job(session: Session, token: WorkerToken, job_id: int, lease_id: str) -> Job:
    """The job if this Worker still holds its lease; LeaseLost otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    expires = job.lease_expires_at
    if (
        job.state != "running"
        or job.lease_id is None
        or not secrets.compare_digest(job.lease_id, lease_id)
        or job.worker_token_id != token.id
        or expires is None
        or expires <= utcnow()
    ):
        raise LeaseLost(f"this Worker no longer holds job {job_id} (state {job.state})")
    return job


def heartbeat(
    session: Session, token: WorkerToken, job_id: int, lease_id: str, lease_seconds: float
) -> Job:
    """Extend the lease by ``lease_seconds`` from now."""
    job = held_job(session, token, job_id, lease_id)
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "running", Job.lease_id == lease_id)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        raise LeaseLost(f"this Worker no longer holds job {job_id}")
    token.last_seen = now
    session.commit()
    session.refresh(job)
    return job


def check_metrics(metrics: Any) -> dict[str, float]:
    """A result's metrics: an object of finite numbers with short names."""
    if not isinstance(metrics, dict) or len(metrics) > 100:
        raise InvalidInput(
            "metrics must be a JSON object of at most 100 numbers", {"field": "metrics"}
        )
    out = {}
    for name, value in metrics.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 100
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"metric {name!r} must be a finite number", {"field": "metrics"})
        out[name] = float(value)
    return out


def finish_job(
    session: Session,
    store: BlobStore,
    token: WorkerToken,
    job_id: int,
    lease_id: str,
    result: bytes,
    metrics: dict[str, float],
    max_bytes: int,
) -> Job:
    """Store a result from the lease holder and mark the job finished (then maybe auto-release)."""
    from pygrid import serde

    job = held_job(session, token, job_id, lease_id)
    if len(result) > max_bytes:
        raise InvalidInput(f"result is larger than {max_bytes} bytes", {"field": "result"})
    try:
        serde.header_info(result)
    except serde.TensorPayloadError as exc:
        raise InvalidInput(f"result: {exc}", {"field": "result"}) from None
    key = result_key(job.id, lease_id)
    store.put(key, result)
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "running", Job.lease_id == lease_id)
        .values(
            state="finished",
            result_key=key,
            metrics=metrics,
            finished_at=utcnow(),
            lease_id=None,
            lease_expires_at=None,
        )
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        with contextlib.suppress(Exception):
            store.delete(key)
        raise LeaseLost(f"this Worker no longer holds job {job_id}")
    audit.record(
        session,
        "job.finish",
        token,
        dataset_id=job.dataset_id,
        job_id=job.id,
        seconds=(utcnow() - job.started_at).total_seconds() if job.started_at else None,
    )
    session.commit()
    session.refresh(job)
    auto_release(session, job)
    session.refresh(job)
    return job


def fail_job(session: Session, token: WorkerToken, job_id: int, lease_id: str, error: str) -> Job:
    """The lease holder reports that the job cannot run; reviewers see ``error``."""
    job = held_job(session, token, job_id, lease_id)
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == "running", Job.lease_id == lease_id)
        .values(
            state="failed",
            error=error[-4000:],
            finished_at=utcnow(),
            lease_id=None,
            lease_expires_at=None,
        )
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        raise LeaseLost(f"this Worker no longer holds job {job_id}")
    audit.record(session, "job.fail", token, dataset_id=job.dataset_id, job_id=job.id)
    session.commit()
    session.refresh(job)
    return job


def claim_json(session: Session, job: Job, lease_seconds: float) -> dict[str, Any]:
    """What a Worker needs to run a job (no private data: that is fetched separately)."""
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id is not None else None
    return {
        "job_id": job.id,
        "lease_id": job.lease_id,
        "lease_seconds": lease_seconds,
        "kind": job.kind,
        "spec": job.spec,
        "schema": dataset.schema if dataset else None,
        "files": sorted(job.files),
    }


def queue_depth(session: Session) -> int:
    """Jobs waiting for a Worker: what the autoscaler sizes the Worker group from."""
    return int(
        session.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) or 0
    )
