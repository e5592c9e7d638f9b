"""What a Node publishes to its Network: dataset metadata, hosted FL processes and its load.

Never rows: a dataset entry is its name, description, tags, row count and column types, the
same public metadata ``GET /data-centric/datasets/<id>`` shows (docs/network.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pygrid.data_centric.datasets import list_datasets, matches, parse_tags
from pygrid.data_centric.queue import queue_depth
from pygrid.db.models import Dataset, FLProcess, Job, WorkerToken, utcnow

# A running Worker asks for work at least every 30 s (its claim long-polls at most that long),
# so a token used within the last two minutes belongs to a Worker that is still there.
WORKER_SEEN_SECONDS = 120


def node_catalogue(
    session: Session, node_id: str, tags: str | Iterable[str] = (), q: str | None = None
) -> dict[str, Any]:
    """The Node's catalogue, its datasets filtered as ``/data-centric/search`` filters them.

    Public metadata: unlike that search, reading it writes no audit event.
    """
    wanted = parse_tags(tags)
    datasets = [_dataset_entry(d) for d in list_datasets(session) if matches(d, wanted, q)]
    processes = session.scalars(select(FLProcess).order_by(FLProcess.id))
    return {
        "node_id": node_id,
        "datasets": datasets,
        "processes": [
            {"name": p.name, "version": p.version, "state": p.state, "cycles_done": p.cycles_done}
            for p in processes
        ],
        "load": node_load(session),
    }


def node_load(session: Session) -> dict[str, int]:
    """Jobs waiting, jobs running, and Workers seen lately (by their tokens)."""
    running = session.scalar(select(func.count()).select_from(Job).where(Job.state == "running"))
    since = utcnow() - timedelta(seconds=WORKER_SEEN_SECONDS)
    workers = session.scalar(
        select(func.count())
        .select_from(WorkerToken)
        .where(WorkerToken.revoked_at.is_(None), WorkerToken.last_seen >= since)
    )
    return {
        "queued_jobs": queue_depth(session),
        "running_jobs": int(running or 0),
        "workers_seen": int(workers or 0),
    }


def _dataset_entry(dataset: Dataset) -> dict[str, Any]:
    schema = dataset.schema
    return {
        "id": dataset.id,
        "name": dataset.name,
        "description": dataset.description,
        "tags": list(dataset.tags),
        "rows": int(schema["rows"]),
        "columns": [
            {"name": c["name"], "dtype": c["dtype"], "shape": list(c["shape"])}
            for c in schema["columns"]
        ],
        "mock_url": f"/data-centric/datasets/{dataset.id}/mock",
    }
