"""Sizing the Worker group from the Node's job-queue depth.

``desired = clamp(ceil(queued / jobs_per_worker), minimum, maximum)``, applied through any
`CloudProvider` at most once per cooldown period, so a queue that fills and drains quickly does
not make the group flap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pygrid.providers.base import CloudProvider, check_desired

__all__ = ["Autoscaler", "desired_workers"]


def desired_workers(queued: int, jobs_per_worker: int, minimum: int, maximum: int) -> int:
    """The Worker count for ``queued`` jobs: ``clamp(ceil(queued / jobs_per_worker), min, max)``."""
    for name, value in [("queued", queued), ("minimum", minimum), ("maximum", maximum)]:
        if check_desired(value) < 0:
            raise ValueError(f"{name} must be >= 0, not {value}")
    if check_desired(jobs_per_worker) < 1:
        raise ValueError(f"jobs_per_worker must be >= 1, not {jobs_per_worker}")
    if minimum > maximum:
        raise ValueError(f"minimum ({minimum}) must not exceed maximum ({maximum})")
    needed = -(-queued // jobs_per_worker)  # ceil in integers: no float rounding on big queues
    return max(minimum, min(maximum, needed))


class Autoscaler:
    """Resize one Worker group from the queue depth, respecting a cooldown between resizes.

    Call `step` periodically with the number of queued jobs. It resizes only when the size it
    computes differs from the group's current desired size *and* at least ``cooldown_seconds``
    have passed since its last resize (the first resize may happen at once). The size is also
    kept within the group's own bounds, so a policy wider than the group never fails a resize.

    Parameters
    ----------
    provider : CloudProvider
        Where the group lives.
    group : str
        The group id, in the provider's format.
    minimum, maximum : int
        Bounds of the policy (normally the Terraform inputs ``workers_min`` / ``workers_max``).
    jobs_per_worker : int
        Queued jobs one Worker is expected to take.
    cooldown_seconds : float
        Least time between two resizes.
    clock : callable returning float
        Seconds on a monotonic clock; tests pass a fake one.
    """

    def __init__(
        self,
        provider: CloudProvider,
        group: str,
        minimum: int,
        maximum: int,
        jobs_per_worker: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        desired_workers(0, jobs_per_worker, minimum, maximum)  # validates the policy
        if cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be >= 0, not {cooldown_seconds}")
        self.provider = provider
        self.group = group
        self.minimum = minimum
        self.maximum = maximum
        self.jobs_per_worker = jobs_per_worker
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._last_resize: float | None = None
        # One step at a time: two concurrent steps could both resize within one cooldown.
        self._lock = threading.Lock()

    @property
    def last_resize(self) -> float | None:
        """Clock time of the last resize this autoscaler made, or None."""
        return self._last_resize

    def cooling_down(self) -> bool:
        """Tell whether a resize now would come too soon after the last one."""
        return (
            self._last_resize is not None
            and self._clock() - self._last_resize < self.cooldown_seconds
        )

    def step(self, queued: int) -> int | None:
        """Resize the group for ``queued`` jobs if needed and allowed; return the new size or None.

        Provider errors propagate (and start no cooldown), so the caller can log them and retry
        at its next step.
        """
        with self._lock:
            target = desired_workers(queued, self.jobs_per_worker, self.minimum, self.maximum)
            if self.cooling_down():
                return None
            status = self.provider.group_status(self.group)
            target = max(status.minimum, min(status.maximum, target))
            if target == status.desired:
                return None
            self.provider.resize(self.group, target)
            self._last_resize = self._clock()
            return target
