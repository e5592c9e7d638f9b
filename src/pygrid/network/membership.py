"""The Node's side of a Network: join once, heartbeat with the catalogue, leave on shutdown.

docs/network.md ("Node side") is the contract. Exactly one process of a Node talks to its
Network: gunicorn runs several replicas, and each would otherwise join and heartbeat on its own.
A non-blocking ``fcntl`` lock on ``<data_dir>/network.lock`` picks that process; the others try
again every few seconds, so when the holder dies another replica takes over.

The credential the Network issues at join is kept in ``<data_dir>/network.json`` (0600), keyed
by Network URL and node id, so a restarted Node comes back without spending its join token again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import requests

from pygrid.config import ServerSettings

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "network.json"
LOCK_FILE = "network.lock"
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
# A 401/409 at join needs an admin (a new token, a removed Node): no point asking faster.
REFUSED_RETRY_SECONDS = 30.0
LOCK_RETRY_SECONDS = 3.0
LEAVE_TIMEOUT = 2.0
# (connect, read) for join and heartbeat; a stop waits at most STOP_WAIT for one in flight.
REQUEST_TIMEOUT = (2.0, 10.0)
STOP_WAIT = 3.0

Outcome = Literal["rejoin", "removed", "stopped"]


def token_fingerprint(token: str) -> str:
    """sha256 of a join token: enough to recognise it again, useless to spend it."""
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialStore:
    """``network.json``: per (Network URL, node id) the credential, or that an admin removed it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entry(self, network_url: str, node_id: str) -> dict[str, Any]:
        """What is stored for this Network and node id; empty when nothing is."""
        for item in self._read():
            if item.get("network_url") == network_url and item.get("node_id") == node_id:
                return item
        return {}

    def credential(self, network_url: str, node_id: str) -> str | None:
        """The saved credential, or None."""
        value = self.entry(network_url, node_id).get("credential")
        return value if isinstance(value, str) and value else None

    def save(self, network_url: str, node_id: str, **fields: Any) -> None:
        """Replace this Network and node id's entry with ``fields``."""
        items = [
            item
            for item in self._read()
            if not (item.get("network_url") == network_url and item.get("node_id") == node_id)
        ]
        items.append({"network_url": network_url, "node_id": node_id, **fields})
        self._write(items)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return []
        items = data.get("networks") if isinstance(data, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def _write(self, items: list[dict[str, Any]]) -> None:
        # mkstemp creates the file 0600: the credential is never readable by others, even briefly.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".network.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": 1, "networks": items}, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Membership:
    """Keeps this Node registered with ``settings.network_url`` from a background thread.

    ``catalogue()`` returns what to publish (``pygrid.network.catalogue.node_catalogue``).
    ``state`` says where it is: waiting_for_lock, joining, joined, no_token, removed, stopped.
    """

    def __init__(
        self,
        settings: ServerSettings,
        catalogue: Callable[[], dict[str, Any]],
        *,
        lock_retry_seconds: float = LOCK_RETRY_SECONDS,
    ) -> None:
        if not settings.network_url:
            raise ValueError("Membership needs settings.network_url")
        self.network_url = settings.network_url
        self.node_id = settings.id
        self.url = settings.resolved_public_url
        self.heartbeat_seconds = settings.heartbeat_seconds
        self.state = "waiting_for_lock"
        self._token = settings.network_token.get_secret_value() if settings.network_token else None
        self._catalogue = catalogue
        self._last_catalogue: dict[str, Any] | None = None
        self._store = CredentialStore(settings.data_dir / CREDENTIALS_FILE)
        self._lock_path = settings.data_dir / LOCK_FILE
        self._lock_retry = lock_retry_seconds
        self._lock_handle: IO[str] | None = None
        self._credential: str | None = None
        self._stopping = threading.Event()
        self._http = _session(self.network_url)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def holds_lock(self) -> bool:
        """Whether this process is the one of its Node that talks to the Network."""
        return self._lock_handle is not None

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="pygrid-network-membership", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating; tell the Network this Node leaves (best effort, 2 s). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        # The thread sends nothing once stopping is set; waiting for it to end means a join or
        # heartbeat in flight is answered (and its credential known) before the leave goes.
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT)
        stuck = self._thread is not None and self._thread.is_alive()
        if self._credential is not None and self.holds_lock:
            # A thread stuck in a request owns the session; a heartbeat may then land after
            # the leave, and the Node shows online until it misses three.
            self._leave(self._credential, _session(self.network_url) if stuck else self._http)
        self.state = "stopped"
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the lock
            self._lock_handle = None
        if not stuck:
            self._http.close()

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        if not self._take_lock():
            return
        # The lock stays held even when there is nothing left to do (no token, removed): the
        # other replicas would only find the same and say it again.
        while not self._stopping.is_set():
            try:
                self._membership()
                return
            except Exception:  # a bug or a broken disk must not end membership for good
                log.exception(
                    "talking to the Network at %s failed; trying again in %g s",
                    self.network_url,
                    MAX_RETRY_SECONDS,
                )
                self._stopping.wait(MAX_RETRY_SECONDS)

    def _membership(self) -> None:
        """Join (or reuse the saved credential), heartbeat; join again if the Network forgot us."""
        while not self._stopping.is_set():
            credential = self._store.credential(self.network_url, self.node_id)
            fresh = credential is None
            if credential is None:
                self.state = "joining"
                credential = self._join()
                if credential is None:
                    return  # stopping, or nothing to join with: the Node serves on alone
            self._credential = credential
            self.state = "joined"
            if self._heartbeats(credential, first_wait=fresh) != "rejoin":
                return

    def _take_lock(self) -> bool:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        # Empty, but 0600 like everything else of the Node's in its data dir.
        fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handle = os.fdopen(fd, "a")
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.info(
                        "another process of Node %s talks to the Network; this one stands by",
                        self.node_id,
                    )
                    waited = True
                if self._stopping.wait(self._lock_retry):
                    handle.close()
                    return False
                continue
            if waited:
                log.info("taking over talking to the Network at %s", self.network_url)
            self._lock_handle = handle
            return True

    def _join(self) -> str | None:
        """Join with the token, retrying until the Network lets us in; None if it never can."""
        if not self._token:
            self.state = "no_token"
            log.error(
                "cannot join the Network at %s: no join token, and no credential for %s in %s. "
                "Ask the Network's admin for one (pygrid network-token create --network %s) and "
                "restart the Node with NETWORK_TOKEN=<token>. The Node keeps serving on its own.",
                self.network_url,
                self.node_id,
                self._store.path,
                self.network_url,
            )
            return None
        removed_with = self._store.entry(self.network_url, self.node_id).get("removed_with_token")
        if removed_with == token_fingerprint(self._token):
            self.state = "removed"
            log.error(
                "not joining the Network at %s: an admin removed %s while it used this join "
                "token; restart the Node with a new one (pygrid network-token create) to join again",
                self.network_url,
                self.node_id,
            )
            return None
        delay = FIRST_RETRY_SECONDS
        body = {
            "join_token": self._token,
            "node_id": self.node_id,
            "url": self.url,
            "heartbeat_seconds": self.heartbeat_seconds,
        }
        while not self._stopping.is_set():
            catalogue = self._current_catalogue()
            try:
                response = self._post(
                    "/registry/join", {**body, "catalogue": catalogue or self._empty_catalogue()}
                )
            except requests.RequestException as exc:
                log.warning(
                    "cannot reach the Network at %s (%s); retrying in %g s",
                    self.network_url,
                    _why(exc),
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            if response is None:
                return None
            credential = _credential(response) if response.status_code == 201 else None
            if credential is not None:
                self._store.save(
                    self.network_url,
                    self.node_id,
                    credential=credential,
                    joined_at=datetime.now(UTC).isoformat(timespec="seconds"),
                )
                log.info(
                    "joined the Network at %s as %s (heartbeat every %g s)",
                    self.network_url,
                    self.node_id,
                    self.heartbeat_seconds,
                )
                return credential
            message, code = _refusal(response)
            if response.status_code >= 500 or response.status_code == 201:
                log.warning(
                    "cannot join the Network at %s: it answered %s (%s); retrying in %g s",
                    self.network_url,
                    response.status_code,
                    message,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            log.error(
                "the Network at %s refused to let %s join: %s (%s %s); retrying in %g s",
                self.network_url,
                self.node_id,
                message,
                response.status_code,
                code or "-",
                REFUSED_RETRY_SECONDS,
            )
            delay = FIRST_RETRY_SECONDS
            self._stopping.wait(REFUSED_RETRY_SECONDS)
        return None

    def _heartbeats(self, credential: str, first_wait: bool) -> Outcome:
        """Heartbeat until stopped, or until the Network forgets or removes this Node."""
        reachable = True
        refused: str | None = None
        # With a saved credential, the first heartbeat that gets through is the way back in.
        returning = not first_wait
        due = time.monotonic() + (self.heartbeat_seconds if first_wait else 0.0)
        while not self._stopping.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + self.heartbeat_seconds
            catalogue = self._current_catalogue()
            if catalogue is None:
                continue
            body = {"node_id": self.node_id, "url": self.url, "catalogue": catalogue}
            try:
                response = self._post("/registry/heartbeat", body, credential)
            except requests.RequestException as exc:
                if reachable:
                    log.warning(
                        "cannot reach the Network at %s (%s); retrying every %g s",
                        self.network_url,
                        _why(exc),
                        self.heartbeat_seconds,
                    )
                reachable = False
                continue
            if response is None:
                return "stopped"
            status = response.status_code
            if status == 200:
                if returning:
                    log.info(
                        "back in the Network at %s as %s, with the credential saved in %s",
                        self.network_url,
                        self.node_id,
                        self._store.path,
                    )
                    returning = False
                elif not reachable or refused:
                    log.info("heartbeats reach the Network at %s again", self.network_url)
                reachable, refused = True, None
                continue
            message, code = _refusal(response)
            if status >= 500:
                if reachable:
                    log.warning(
                        "the Network at %s answered %s to a heartbeat (%s); retrying every %g s",
                        self.network_url,
                        status,
                        message,
                        self.heartbeat_seconds,
                    )
                reachable = False
            elif status == 410:
                self._forget(removed=True)
                self.state = "removed"
                log.error(
                    "removed from the Network at %s by an admin (%s); heartbeats stop. To join "
                    "again, restart the Node with a new join token (pygrid network-token create)",
                    self.network_url,
                    message,
                )
                return "removed"
            elif status in (401, 403):
                # 401 unknown_credential: the Network forgot us. 403 not_your_node_id: the saved
                # credential is another Node's. Either way it is useless: join afresh.
                self._forget(removed=False)
                log.warning(
                    "the Network at %s refused this Node's credential: %s (%s); joining again "
                    "with the join token",
                    self.network_url,
                    message,
                    code or status,
                )
                return "rejoin"
            elif message != refused:
                log.error(
                    "the Network at %s refused a heartbeat: %s (%s %s)",
                    self.network_url,
                    message,
                    status,
                    code or "-",
                )
                refused = message
        return "stopped"

    def _leave(self, credential: str, http: requests.Session) -> None:
        try:
            response = http.post(
                f"{self.network_url}/registry/leave",
                json={"node_id": self.node_id},
                headers={"Authorization": f"Bearer {credential}"},
                timeout=LEAVE_TIMEOUT,
            )
        except requests.RequestException as exc:
            log.warning(
                "could not tell the Network at %s that %s leaves: %s",
                self.network_url,
                self.node_id,
                _why(exc),
            )
            return
        if response.status_code == 200:
            log.info("left the Network at %s", self.network_url)
        else:
            message, _ = _refusal(response)
            log.warning(
                "the Network at %s refused the leave (%s: %s)",
                self.network_url,
                response.status_code,
                message,
            )

    # -- helpers -----------------------------------------------------------------------------

    def _post(
        self, path: str, body: dict[str, Any], credential: str | None = None
    ) -> requests.Response | None:
        """POST to the Network; None once stopping (the leave must be the last request)."""
        if self._stopping.is_set():
            return None
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return self._http.post(
            f"{self.network_url}{path}", json=body, headers=headers, timeout=REQUEST_TIMEOUT
        )

    def _current_catalogue(self) -> dict[str, Any] | None:
        """The catalogue now; the last one built if building fails (a database blip)."""
        try:
            self._last_catalogue = self._catalogue()
        except Exception:
            log.exception("cannot build the catalogue; publishing the previous one")
        return self._last_catalogue

    def _empty_catalogue(self) -> dict[str, Any]:
        load = {"queued_jobs": 0, "running_jobs": 0, "workers_seen": 0}
        return {"node_id": self.node_id, "datasets": [], "processes": [], "load": load}

    def _forget(self, removed: bool) -> None:
        self._credential = None
        fields: dict[str, Any] = {}
        if removed:
            fields["removed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            # Another replica taking over must not rejoin with the token in use when removed.
            if self._token:
                fields["removed_with_token"] = token_fingerprint(self._token)
        self._store.save(self.network_url, self.node_id, **fields)


def _session(network_url: str) -> requests.Session:
    session = requests.Session()
    host = urlsplit(network_url).hostname or ""
    # A Network on this machine is reached directly, whatever proxy the environment names.
    if host in ("127.0.0.1", "localhost", "::1"):
        session.trust_env = False
    return session


def _why(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    return type(exc).__name__


def _credential(response: requests.Response) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        value = response.json().get("credential")
        if isinstance(value, str) and value:
            return value
    return None


def _refusal(response: requests.Response) -> tuple[str, str | None]:
    """The Network's message and ``detail.code`` from an error answer."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:200] or response.reason or "no message"), None
    if not isinstance(body, dict):
        return str(body)[:200], None
    detail = body.get("detail")
    code = detail.get("code") if isinstance(detail, dict) else None
    return str(body.get("error") or response.reason), code if isinstance(code, str) else None
