"""The device side of the protocol: authenticate, request a cycle, download, report.

A report answered 200 is durable: its diff is in the blob store and its row committed before the
answer leaves, so a Node killed at any point afterwards still folds it into the checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid import serde
from pygrid.db.models import Assignment, Checkpoint, Cycle, Device, FLProcess, Plan, utcnow
from pygrid.errors import Conflict, InvalidInput, NotFound, Unauthorized
from pygrid.model_centric.configs import ServerConfig
from pygrid.model_centric.device_auth import check_device_token
from pygrid.model_centric.processes import diff_key, find_process, latest_checkpoint
from pygrid.storage import BlobStore

MAX_METRICS = 32


def hash_key(request_key: str) -> str:
    """The stored form of a request key."""
    return hashlib.sha256(request_key.encode()).hexdigest()


def seconds_until(moment: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``moment``, never negative."""
    return max(0.0, round((moment - now).total_seconds(), 3))


def authenticate(
    session: Session, model_name: str, model_version: str | None, auth_token: str | None
) -> tuple[Device, bool]:
    """Register a device for a process; returns it and whether it must run the speed test."""
    process = find_process(session, model_name, model_version)
    config = ServerConfig.model_validate(process.server_config)
    subject = check_device_token(config.authentication, auth_token)
    device = Device(id=secrets.token_hex(16), process_id=process.id, subject=subject)
    session.add(device)
    session.commit()
    return device, config.requires_speed_test


def get_device(session: Session, device_id: str) -> Device:
    """The device with ``device_id``; NotFound for an unknown one."""
    device = session.get(Device, device_id) if device_id else None
    if device is None:
        raise NotFound("unknown worker_id: authenticate first", {"field": "worker_id"})
    return device


@dataclass(frozen=True)
class Accepted:
    """A device's place in a cycle."""

    request_key: str
    cycle: Cycle
    checkpoint: Checkpoint
    plans: dict[str, int]
    client_config: dict[str, Any]
    now: datetime

    def as_json(self) -> dict[str, Any]:
        """The protocol's accepted answer."""
        return {
            "status": "accepted",
            "request_key": self.request_key,
            "cycle_id": self.cycle.id,
            "cycle_sequence": self.cycle.sequence,
            "model_id": self.checkpoint.id,
            "plans": self.plans,
            "client_config": self.client_config,
            "deadline": self.cycle.deadline.isoformat(),
            "seconds_left": seconds_until(self.cycle.deadline, self.now),
        }


def rejected(timeout: float | None, reason: str) -> dict[str, Any]:
    """The protocol's rejected answer: retry after ``timeout`` seconds, or never if None."""
    return {"status": "rejected", "timeout": timeout, "reason": reason}


def request_cycle(
    session: Session,
    device_id: str,
    model: str,
    version: str | None,
    speeds: dict[str, float | None],
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> Accepted | dict[str, Any]:
    """Accept the device into the open cycle, or say when to come back."""
    now = now or utcnow()
    device = get_device(session, device_id)
    process = find_process(session, model, version)
    if device.process_id != process.id:
        raise InvalidInput(
            "this worker_id was issued for another FL process", {"field": "worker_id"}
        )
    config = ServerConfig.model_validate(process.server_config)
    if process.state != "running":
        return rejected(None, "training is over")
    _check_speeds(session, device, config, speeds)
    cycle = session.scalar(
        select(Cycle)
        .where(Cycle.process_id == process.id, Cycle.state == "open")
        .order_by(Cycle.sequence.desc())
    )
    if cycle is None:
        return rejected(1.0, "the last cycle is being aggregated")
    wait = seconds_until(cycle.deadline, now)
    # A device that already reported waits for this cycle to close, which at max_diffs can be
    # long before the deadline: have it look again after a slice of the cycle, not the whole.
    soon = min(wait, max(5.0, config.cycle_length / 60))
    previous = session.scalar(
        select(Assignment).where(Assignment.cycle_id == cycle.id, Assignment.device_id == device.id)
    )
    request_key = secrets.token_urlsafe(32)
    if previous is not None:
        if previous.reported_at is not None:
            return rejected(soon, "this device already reported in this cycle")
        # A device that lost our answer asks again: same place, fresh key.
        previous.request_key_hash = hash_key(request_key)
        session.commit()
        return _accepted(session, process, cycle, request_key, now)
    if not _may_reuse(session, device, cycle, config):
        return rejected(wait, "this device trained too recently (do_not_reuse_workers_until_cycle)")
    if config.pool_selection == "random":
        free = config.max_workers - cycle.accepted
        if (rng or random).random() >= free / config.max_workers:
            return rejected(wait, "not selected this cycle")
    # Compare-and-increment: concurrent requests (and replicas) never exceed max_workers.
    taken = session.execute(
        update(Cycle)
        .where(Cycle.id == cycle.id, Cycle.state == "open", Cycle.accepted < config.max_workers)
        .values(accepted=Cycle.accepted + 1)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return rejected(wait, "this cycle is full")
    session.add(
        Assignment(
            cycle_id=cycle.id,
            device_id=device.id,
            request_key_hash=hash_key(request_key),
            folded=False,
        )
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("this device is already being accepted into this cycle") from None
    session.refresh(cycle)
    return _accepted(session, process, cycle, request_key, now)


def _accepted(
    session: Session, process: FLProcess, cycle: Cycle, request_key: str, now: datetime
) -> Accepted:
    plans = {
        p.name: p.id for p in session.scalars(select(Plan).where(Plan.process_id == process.id))
    }
    return Accepted(
        request_key=request_key,
        cycle=cycle,
        checkpoint=latest_checkpoint(session, process.id),
        plans=plans,
        client_config=process.client_config,
        now=now,
    )


def _check_speeds(
    session: Session, device: Device, config: ServerConfig, speeds: dict[str, float | None]
) -> None:
    for field, value in speeds.items():
        if value is not None and (not math.isfinite(value) or value < 0):
            raise InvalidInput(f"{field} must be a non-negative number", {"field": field})
    device.ping_ms = speeds.get("ping") if speeds.get("ping") is not None else device.ping_ms
    device.download_mbps = (
        speeds.get("download") if speeds.get("download") is not None else device.download_mbps
    )
    device.upload_mbps = (
        speeds.get("upload") if speeds.get("upload") is not None else device.upload_mbps
    )
    for field, minimum, value in (
        ("download", config.minimum_download_speed, device.download_mbps),
        ("upload", config.minimum_upload_speed, device.upload_mbps),
    ):
        if minimum > 0 and value is None:
            raise InvalidInput(
                f"this process needs your {field} speed: run the speed test", {"field": field}
            )
        if minimum > 0 and value is not None and value < minimum:
            session.commit()
            raise InvalidInput(
                f"{field} speed {value} Mbit/s is below the minimum of {minimum} Mbit/s",
                {"field": field},
            )


def _may_reuse(session: Session, device: Device, cycle: Cycle, config: ServerConfig) -> bool:
    gap = config.do_not_reuse_workers_until_cycle
    if gap <= 1:
        return True
    last = session.scalar(
        select(Cycle.sequence)
        .join(Assignment, Assignment.cycle_id == Cycle.id)
        .where(Assignment.device_id == device.id, Cycle.process_id == cycle.process_id)
        .order_by(Cycle.sequence.desc())
        .limit(1)
    )
    return last is None or cycle.sequence >= last + gap


def find_assignment(session: Session, device_id: str, request_key: str) -> Assignment:
    """The assignment a request key opens; Unauthorized for a wrong or stale key."""
    get_device(session, device_id)
    assignment = session.scalar(
        select(Assignment).where(Assignment.request_key_hash == hash_key(request_key))
    )
    if assignment is None or assignment.device_id != device_id:
        raise Unauthorized("wrong or expired request_key", {"field": "request_key"})
    return assignment


def _cycle_of(session: Session, device_id: str, request_key: str) -> Cycle:
    cycle = session.get(Cycle, find_assignment(session, device_id, request_key).cycle_id)
    assert cycle is not None, "assignments cascade with their cycle"
    return cycle


def authorise_model(
    session: Session, device_id: str, request_key: str, model_id: int
) -> Checkpoint:
    """The checkpoint a device may download with its request key."""
    cycle = _cycle_of(session, device_id, request_key)
    checkpoint = session.get(Checkpoint, model_id)
    if checkpoint is None or checkpoint.process_id != cycle.process_id:
        raise NotFound(f"no model {model_id} for this request", {"field": "model_id"})
    return checkpoint


def authorise_plan(session: Session, device_id: str, request_key: str, plan_id: int) -> Plan:
    """The plan a device may download with its request key."""
    cycle = _cycle_of(session, device_id, request_key)
    plan = session.get(Plan, plan_id)
    if plan is None or plan.process_id != cycle.process_id:
        raise NotFound(f"no plan {plan_id} for this request", {"field": "plan_id"})
    return plan


def check_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Device metrics: at most 32 names, each a finite number."""
    if len(metrics) > MAX_METRICS:
        raise InvalidInput(f"at most {MAX_METRICS} metrics", {"field": "metrics"})
    clean = {}
    for name, value in metrics.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"metric {name!r} must be a finite number", {"field": "metrics"})
        if not name or len(name) > 64:
            raise InvalidInput("metric names have 1 to 64 characters", {"field": "metrics"})
        clean[name] = float(value)
    return clean


def report(
    session: Session,
    store: BlobStore,
    device_id: str,
    request_key: str,
    num_samples: int,
    metrics: dict[str, Any],
    diff: bytes,
    max_diff_bytes: int,
) -> Assignment:
    """Check and store a device's diff; once this returns, the report is durable."""
    assignment = find_assignment(session, device_id, request_key)
    if assignment.reported_at is not None:
        raise Conflict("this request_key has already reported")
    cycle = session.get(Cycle, assignment.cycle_id)
    assert cycle is not None
    if cycle.state != "open":
        raise Conflict(f"cycle {cycle.sequence} is closed; request a new cycle")
    if num_samples < 1:
        raise InvalidInput("num_samples must be at least 1", {"field": "num_samples"})
    clean_metrics = check_metrics(metrics)
    process = session.get(FLProcess, cycle.process_id)
    assert process is not None
    try:
        serde.load(
            diff, expected=serde.spec_from_json(process.model_spec), max_bytes=max_diff_bytes
        )
    except serde.TensorPayloadError as exc:
        raise InvalidInput(f"diff: {exc}", {"field": "diff"}) from None
    key = diff_key(process.id, cycle.sequence, assignment.id, secrets.token_hex(8))
    store.put(key, diff)
    now = utcnow()
    # Both updates are conditional, so a racing second report or a cycle that closed meanwhile
    # makes this report fail as a whole instead of being counted twice or after the fact.
    marked = session.execute(
        update(Assignment)
        .where(Assignment.id == assignment.id, Assignment.reported_at.is_(None))
        .values(reported_at=now, diff_key=key, num_samples=num_samples, metrics=clean_metrics)
    )
    counted = session.execute(
        update(Cycle)
        .where(Cycle.id == cycle.id, Cycle.state == "open")
        .values(
            diffs_received=Cycle.diffs_received + 1, num_samples=Cycle.num_samples + num_samples
        )
    )
    if marked.rowcount != 1 or counted.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        store.delete(key)
        raise Conflict("this report arrived after its cycle closed or was already counted")
    session.commit()
    return assignment
