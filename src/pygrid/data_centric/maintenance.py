"""The Node's periodic data-centric chores: requeue jobs whose Worker vanished, and resize the
cloud Worker group from the queue depth (when the Node runs in a cloud deployment).

``pygrid deploy`` writes ``PYGRID_CLOUD`` and ``PYGRID_WORKER_GROUP`` into the Node's
environment; with both set, every pass asks the provider's `Autoscaler` for
``clamp(ceil(queued / jobs_per_worker), group min, group max)`` Workers, at most once per
cooldown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from pygrid.config import ServerSettings
from pygrid.data_centric.queue import queue_depth, requeue_expired
from pygrid.providers.autoscale import Autoscaler

log = logging.getLogger(__name__)

# The group's own bounds (workers_min/workers_max in Terraform) are the real limits; the policy
# only needs to be no narrower.
POLICY_MAX = 10_000


def autoscaler_from_settings(settings: ServerSettings) -> Autoscaler | None:
    """The Worker-group autoscaler this Node's settings ask for, or None."""
    if not settings.cloud or not settings.worker_group:
        return None
    from pygrid.providers import get_provider

    return Autoscaler(
        get_provider(settings.cloud),
        settings.worker_group,
        minimum=0,
        maximum=POLICY_MAX,
        jobs_per_worker=settings.jobs_per_worker,
        cooldown_seconds=settings.autoscale_cooldown,
    )


class JobMaintenance:
    """One pass of the chores; the Node's scheduler thread calls `run_once` every tick."""

    def __init__(self, sessions: Callable[[], Session], autoscaler: Autoscaler | None) -> None:
        self.sessions = sessions
        self.autoscaler = autoscaler

    def run_once(self) -> int | None:
        """Requeue expired leases; resize the Worker group if needed. The new size, or None."""
        with self.sessions() as session:
            for job_id in requeue_expired(session):
                log.info("job %s lost its Worker (lease expired): back in the queue", job_id)
            queued = queue_depth(session)
        if self.autoscaler is None:
            return None
        size = self.autoscaler.step(queued)
        if size is not None:
            log.info(
                "resized Worker group %s to %s for %s queued jobs",
                self.autoscaler.group,
                size,
                queued,
            )
        return size
