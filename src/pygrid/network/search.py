"""Search across Nodes: from the catalogues they published (cached), or by asking them now (live).

Cached search reads the database only and answers in milliseconds. Live search asks every
online Node's ``GET /catalogue`` at once on a shared thread pool (`Fanout`) and waits at most
``timeout`` seconds in all: a Node that did not answer by then is listed in ``unanswered`` and
contributes nothing. The request's database session is closed before anyone is asked, so a
hanging Node holds no database connection either.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask.sansio.app import App
from pydantic import ValidationError
from sqlalchemy.orm import Session

from pygrid.db.models import GridNode, utcnow
from pygrid.network import registry
from pygrid.network.registry import Catalogue

# Entries of a catalogue that one search keeps: datasets or processes.
Matcher = Callable[[dict[str, Any]], list[dict[str, Any]]]

log = logging.getLogger(__name__)

MAX_CATALOGUE_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


# ---- what matches -----------------------------------------------------------------------------


def dataset_matcher(tags: Iterable[str], q: str | None) -> Matcher:
    """Datasets carrying every tag whose name, description or tags contain ``q``
    (case-insensitive), as ``/data-centric/search`` filters on a Node."""
    wanted = {tag.lower() for tag in tags}
    needle = (q or "").strip().lower()

    def match(catalogue: dict[str, Any]) -> list[dict[str, Any]]:
        found = []
        for dataset in catalogue.get("datasets", []):
            have = [str(tag).lower() for tag in dataset.get("tags", [])]
            if not wanted <= set(have):
                continue
            text = " ".join([dataset.get("name", ""), dataset.get("description", ""), *have])
            if needle and needle not in text.lower():
                continue
            found.append(dataset)
        return found

    return match


def process_matcher(name: str, version: str | None) -> Matcher:
    """Processes with exactly this name (and version, when given)."""

    def match(catalogue: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            process
            for process in catalogue.get("processes", [])
            if process.get("name") == name
            and (version is None or process.get("version") == version)
        ]

    return match


# ---- answers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A Node to search, as read from the registry."""

    node_id: str
    url: str
    status: str
    catalogue: dict[str, Any]


def _hits(targets: Iterable[Target], matcher: Matcher, key: str) -> list[dict[str, Any]]:
    return [
        {"node_id": t.node_id, "node_url": t.url, "node_status": t.status, key: entry}
        for t in targets
        for entry in matcher(t.catalogue)
    ]


def searchable(session: Session, states: set[str], now: datetime | None = None) -> list[Target]:
    """Registered Nodes whose status is in ``states``, by id."""
    now = now or utcnow()
    found = []
    node: GridNode
    for node in registry.registered(session):
        state = registry.status(node, now)
        if state in states:
            found.append(Target(node.id, node.url, state, node.catalogue or {}))
    return found


def cached(
    session: Session, matcher: Matcher, key: str, now: datetime | None = None
) -> dict[str, Any]:
    """Search the catalogues online and stale Nodes last published."""
    targets = searchable(session, {"online", "stale"}, now)
    return {
        "results": _hits(targets, matcher, key),
        "nodes_searched": len(targets),
        "unanswered": [],
    }


def live(
    session: Session,
    fanout: Fanout,
    matcher: Matcher,
    key: str,
    params: dict[str, str],
    timeout: float,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Ask every online Node's ``GET /catalogue?params`` now; at most ``timeout`` seconds."""
    targets = searchable(session, {"online"}, now)
    # Nothing below needs the database: give the connection back before waiting on Nodes.
    session.close()
    answers = fanout.ask(targets, params, timeout)
    answered: list[Target] = []
    unanswered: list[dict[str, str]] = []
    for t in targets:
        answer = answers[t.node_id]
        if isinstance(answer, dict):
            answered.append(Target(t.node_id, t.url, t.status, answer))
        else:
            unanswered.append({"node_id": t.node_id, "reason": answer})
    return {
        # the Node filtered already; filtering again makes a sloppy Node harmless
        "results": _hits(answered, matcher, key),
        "nodes_searched": len(targets),
        "unanswered": unanswered,
    }


# ---- asking Nodes -----------------------------------------------------------------------------


class NodeDidNotAnswer(Exception):
    """Why a Node's catalogue did not arrive (the message goes to ``unanswered``)."""


class Fanout:
    """One thread pool per app for live searches; threads start on first use.

    Each call is bounded by the search's deadline (connect, every read, and the body as a
    whole), so a hanging Node holds a pool thread for at most about ``timeout``; a call that
    waited in the queue past its deadline gives up without connecting.
    """

    def __init__(self, max_workers: int = 64) -> None:
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def init_app(self, app: App) -> None:
        """Attach to ``app`` as ``app.extensions["pygrid.fanout"]``."""
        app.extensions["pygrid.fanout"] = self

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool, created on first use (never at import time, never before a fork)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="pygrid-live-search"
                )
            return self._executor

    def close(self) -> None:
        """Stop the pool's threads once they finish what they are doing."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def ask(
        self, targets: list[Target], params: dict[str, str], timeout: float
    ) -> dict[str, dict[str, Any] | str]:
        """Each target's catalogue, or why it is missing; returns within about ``timeout``."""
        if not targets:
            return {}
        deadline = time.monotonic() + timeout
        query = urlencode({k: v for k, v in params.items() if v})
        futures: dict[str, Future[dict[str, Any]]] = {
            t.node_id: self.executor.submit(
                fetch_catalogue, t.node_id, f"{t.url}/catalogue", query, deadline, timeout
            )
            for t in targets
        }
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        answers: dict[str, dict[str, Any] | str] = {}
        for node_id, future in futures.items():
            if not future.done():
                future.cancel()
                answers[node_id] = late(timeout)
            elif isinstance(error := future.exception(), NodeDidNotAnswer):
                answers[node_id] = str(error)
            elif error is not None:
                # a bug here, not the Node's fault: the operator gets the traceback, not the caller
                log.error("asking Node %s failed", node_id, exc_info=error)
                answers[node_id] = "not asked (internal error)"
            else:
                answers[node_id] = future.result()
        return answers


def late(timeout: float) -> str:
    """The reason given for a Node that did not answer in time."""
    return f"no answer within {timeout:g} s"


def fetch_catalogue(
    node_id: str, url: str, query: str, deadline: float, timeout: float
) -> dict[str, Any]:
    """``GET url?query`` for a catalogue by ``deadline`` (time.monotonic).

    Every socket operation waits at most the time left when the call starts, and the body is
    read in chunks with the deadline checked between them, so a Node trickling its answer
    holds the thread for at most about twice the search's timeout.
    """

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeDidNotAnswer(late(timeout))
        return left

    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.netloc, timeout=remaining())
    try:
        path = parts.path + (f"?{query}" if query else "")
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise NodeDidNotAnswer(f"answered HTTP {response.status}")
        body = bytearray()
        while remaining():
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_CATALOGUE_BYTES:
                raise NodeDidNotAnswer("answered a catalogue over 16 MiB")
    except TimeoutError:
        raise NodeDidNotAnswer(late(timeout)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise NodeDidNotAnswer(f"unreachable ({type(exc).__name__})") from None
    finally:
        connection.close()
    try:
        catalogue = Catalogue.model_validate(json.loads(body))
        return registry.stored_catalogue(node_id, catalogue)
    except (ValueError, ValidationError, registry.NotYourNodeId):
        raise NodeDidNotAnswer("answered something that is not its catalogue") from None
