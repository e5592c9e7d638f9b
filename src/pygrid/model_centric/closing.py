"""Closing cycles: aggregate the diffs into the next checkpoint, open the next cycle.

Closing is idempotent and safe with several replicas. A replica claims a cycle with a
compare-and-set (open -> closing); a claim older than ``CLOSING_LEASE`` (its replica died) may be
taken over. The checkpoint, the cycle's new state and the next cycle are committed in ONE
transaction, and the checkpoint number is unique per process, so a cycle is folded exactly once.
Diff blobs are deleted only after that commit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid import serde
from pygrid.db.models import Assignment, Checkpoint, Cycle, FLProcess, utcnow
from pygrid.model_centric.configs import ServerConfig
from pygrid.model_centric.processes import checkpoint_key, open_cycle, optimizer_key
from pygrid.storage import BlobStore

log = logging.getLogger(__name__)
CLOSING_LEASE = timedelta(minutes=5)


def weighted_metrics(reports: list[Assignment]) -> dict[str, float]:
    """Each metric averaged over the devices that sent it, weighted by their num_samples."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for report in reports:
        for name, value in (report.metrics or {}).items():
            totals[name] = totals.get(name, 0.0) + value * (report.num_samples or 0)
            weights[name] = weights.get(name, 0.0) + (report.num_samples or 0)
    return {name: totals[name] / weights[name] for name in totals if weights[name] > 0}


def due_cycles(session: Session, now: datetime) -> list[Cycle]:
    """Open cycles at their deadline or max_diffs, and closings whose replica went quiet."""
    candidates = session.scalars(
        select(Cycle).where(
            or_(
                Cycle.state == "open",
                (Cycle.state == "closing") & (Cycle.closing_since < now - CLOSING_LEASE),
            )
        )
    )
    due = []
    for cycle in candidates:
        process = session.get(FLProcess, cycle.process_id)
        assert process is not None
        config = ServerConfig.model_validate(process.server_config)
        full = cycle.diffs_received >= config.effective_max_diffs
        if cycle.state == "closing" or full or cycle.deadline <= now:
            due.append(cycle)
    return due


def extend_if_short(session: Session, cycle: Cycle, config: ServerConfig, now: datetime) -> bool:
    """At the deadline with too few diffs or devices, push the deadline one cycle_length on.

    Diffs already received are kept: the cycle goes on collecting. Returns True if extended.
    """
    if cycle.diffs_received >= config.min_diffs and cycle.accepted >= config.min_workers:
        return False
    extended = session.execute(
        update(Cycle)
        .where(Cycle.id == cycle.id, Cycle.state == "open", Cycle.deadline == cycle.deadline)
        .values(
            deadline=now + timedelta(seconds=config.cycle_length), extensions=Cycle.extensions + 1
        )
    )
    session.commit()
    return extended.rowcount == 1  # type: ignore[attr-defined]


def claim(session: Session, cycle: Cycle, now: datetime) -> bool:
    """Move the cycle to 'closing' for this replica; False if another replica has it."""
    stale = now - CLOSING_LEASE
    claimed = session.execute(
        update(Cycle)
        .where(
            Cycle.id == cycle.id,
            or_(Cycle.state == "open", (Cycle.state == "closing") & (Cycle.closing_since < stale)),
        )
        .values(state="closing", closing_since=now)
    )
    session.commit()
    return claimed.rowcount == 1  # type: ignore[attr-defined]


@contextlib.contextmanager
def _diff_sources(store: BlobStore, reports: list[Assignment]) -> Iterator[list[Any]]:
    from pygrid.aggregation import FileDiff

    with contextlib.ExitStack() as stack:
        sources = []
        for report in reports:
            assert report.diff_key is not None and report.num_samples is not None
            path = stack.enter_context(store.local_path(report.diff_key))
            sources.append(FileDiff(path, report.num_samples))
        yield sources


def close_cycle(
    session: Session, store: BlobStore, cycle: Cycle, seed: int | None = None
) -> Checkpoint | None:
    """Fold a claimed cycle's diffs into checkpoint ``cycle.sequence``; None if already done."""
    from pygrid.aggregation import DPFedAvg, aggregate, would_exceed

    process = session.get(FLProcess, cycle.process_id)
    assert process is not None
    config = ServerConfig.model_validate(process.server_config)
    reports = list(
        session.scalars(
            select(Assignment)
            .where(Assignment.cycle_id == cycle.id, Assignment.reported_at.is_not(None))
            .order_by(Assignment.id)
        )
    )
    previous = session.scalar(
        select(Checkpoint).where(
            Checkpoint.process_id == process.id, Checkpoint.number == cycle.sequence - 1
        )
    )
    assert previous is not None, f"checkpoint {cycle.sequence - 1} is missing"
    params = serde.load(store.get(previous.blob_key), max_bytes=2**40, allow_nonfinite=False)
    state = {}
    if process.optimizer_state_key:
        state = serde.load(store.get(process.optimizer_state_key), max_bytes=2**40)
    started = time.perf_counter()
    with _diff_sources(store, reports) as sources:
        result = aggregate(
            config.aggregation, params, sources, state, cycles_done=process.cycles_done, seed=seed
        )
    seconds = time.perf_counter() - started
    number = cycle.sequence
    store.put(checkpoint_key(process.id, number), serde.dump(result.params))
    state_key = None
    if result.state:
        state_key = optimizer_key(process.id, number)
        store.put(state_key, serde.dump(result.state))

    now = utcnow()
    checkpoint = Checkpoint(
        process_id=process.id, number=number, blob_key=checkpoint_key(process.id, number)
    )
    session.add(checkpoint)
    cycle.state = "closed"
    cycle.closed_at = now
    cycle.metrics = {**weighted_metrics(reports), "aggregation_seconds": round(seconds, 4)}
    cycle.epsilon = result.epsilon
    process.cycles_done += 1
    process.optimizer_state_key = state_key
    if result.epsilon is not None:
        process.epsilon_spent = result.epsilon
    for report in reports:
        report.folded = True
    finished = config.num_cycles and process.cycles_done >= config.num_cycles
    if isinstance(config.aggregation, DPFedAvg) and would_exceed(
        process.cycles_done, config.aggregation
    ):
        finished = True
    if finished:
        process.state = "completed"
    else:
        open_cycle(session, process, number + 1)
    try:
        session.commit()
    except IntegrityError:
        # Another replica folded this cycle first (it took over a lease we still held).
        session.rollback()
        return None
    for report in reports:
        with contextlib.suppress(Exception):
            store.delete(report.diff_key or "")
    return checkpoint


def close_due_cycles(
    sessions: Callable[[], Session],
    store: BlobStore,
    now: datetime | None = None,
    on_closed: Callable[[Cycle, float], None] | None = None,
) -> list[int]:
    """Close (or extend) every due cycle; returns the sequence numbers closed."""
    now = now or utcnow()
    closed = []
    with sessions() as session:
        due = due_cycles(session, now)
    for cycle in due:
        with sessions() as session:
            cycle = session.get(Cycle, cycle.id)  # type: ignore[assignment]
            process = session.get(FLProcess, cycle.process_id)
            assert process is not None
            config = ServerConfig.model_validate(process.server_config)
            full = cycle.diffs_received >= config.effective_max_diffs
            if cycle.state == "open" and not full and extend_if_short(session, cycle, config, now):
                continue
            if not claim(session, cycle, now):
                continue
            session.refresh(cycle)
            started = time.perf_counter()
            try:
                checkpoint = close_cycle(session, store, cycle)
            except Exception:
                # The claim stays; its lease runs out and a later pass (or replica) retries.
                log.exception(
                    "closing cycle %s of process %s failed", cycle.sequence, cycle.process_id
                )
                session.rollback()
                continue
            if checkpoint is not None:
                closed.append(cycle.sequence)
                if on_closed is not None:
                    on_closed(cycle, time.perf_counter() - started)
    return closed
