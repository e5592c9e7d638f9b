"""The audit log: every step of the data-centric story, written in the same transaction as it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pygrid.db.models import AuditEvent, User, WorkerToken

ACTIONS = (
    "dataset.upload",
    "dataset.update",
    "dataset.delete",
    "dataset.search",
    "dataset.mock",
    "job.submit",
    "job.approve",
    "job.deny",
    "job.cancel",
    "job.claim",
    "job.requeue",
    "job.finish",
    "job.fail",
    "job.release",
    "job.withhold",
    "job.download",
    "budget.set",
    "worker_token.create",
    "worker_token.revoke",
)

SYSTEM = "system"


def actor_of(who: User | WorkerToken | None) -> str:
    """How an event names whoever caused it."""
    if isinstance(who, User):
        return f"user:{who.email}"
    if isinstance(who, WorkerToken):
        return f"worker:{who.name}#{who.id}"
    return SYSTEM


def record(
    session: Session,
    action: str,
    who: User | WorkerToken | None,
    *,
    dataset_id: int | None = None,
    job_id: int | None = None,
    **detail: Any,
) -> None:
    """Add an event to the session; it commits with the change it describes."""
    assert action in ACTIONS, action
    session.add(
        AuditEvent(
            action=action,
            actor=actor_of(who),
            dataset_id=dataset_id,
            job_id=job_id,
            detail=detail,
        )
    )


def events(
    session: Session,
    *,
    dataset_id: int | None = None,
    job_id: int | None = None,
    action: str | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """Events matching every filter given, newest first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if dataset_id is not None:
        query = query.where(AuditEvent.dataset_id == dataset_id)
    if job_id is not None:
        query = query.where(AuditEvent.job_id == job_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(session.scalars(query))


def event_json(event: AuditEvent) -> dict[str, Any]:
    """An event as the API shows it."""
    return {
        "id": event.id,
        "at": event.at,
        "action": event.action,
        "actor": event.actor,
        "dataset_id": event.dataset_id,
        "job_id": event.job_id,
        "detail": event.detail,
    }
