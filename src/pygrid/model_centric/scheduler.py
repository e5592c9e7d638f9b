"""A background thread per server process that closes cycles on time.

It does not wait for another report: it wakes every ``interval`` seconds (or at once when a
report fills a cycle) and closes or extends every due cycle. With several replicas each runs one;
the claim in ``closing`` makes sure exactly one of them closes a given cycle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from pygrid.db.models import Cycle
from pygrid.model_centric.closing import close_due_cycles
from pygrid.storage import BlobStore

log = logging.getLogger(__name__)


class CycleScheduler:
    """Runs ``close_due_cycles`` in a daemon thread until ``stop``."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        store: BlobStore,
        interval: float = 1.0,
        on_closed: Callable[[Cycle, float], None] | None = None,
        chores: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.interval = interval
        self.on_closed = on_closed
        # other periodic work of the server (data-centric lease expiry, autoscaling)
        self.chores = tuple(chores)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pygrid-cycle-scheduler", daemon=True
            )
            self._thread.start()

    def poke(self) -> None:
        """Look for due cycles now instead of at the next tick."""
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread and wait for it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> list[int]:
        """One pass: close or extend every due cycle; returns the sequences closed."""
        return close_due_cycles(self.sessions, self.store, on_closed=self.on_closed)

    def _run(self) -> None:
        while not self._stopping.is_set():
            for task in (self.run_once, *self.chores):
                try:
                    task()
                except Exception:  # the thread must survive a bad pass (a database blip)
                    log.exception("scheduler pass failed: %s", getattr(task, "__qualname__", task))
            self._wake.wait(self.interval)
            self._wake.clear()
