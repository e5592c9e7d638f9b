"""The cloud Workers' token: the Node mints it and publishes it in its cloud's secret store, and
each Worker reads it there with its own instance identity.

No token ever passes through user data, Terraform state or a file on a Worker's disk. The
Terraform module creates the secret (``PYGRID_WORKER_TOKEN_SECRET`` in both the app VM's and the
Workers' environment) and grants the app VM read and write on it alone, the Workers read only.

The Node side is idempotent: `publish_worker_token` leaves a secret that already holds a live
token alone, and mints a new one only when it holds none (first start, a new database) or a
revoked one, so revoking the token in ``pygrid worker-token`` rotates it. The Workers exit when
their token is refused and systemd restarts them: they read the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pygrid.providers.base import MissingCredentials, ProviderError, SecretStore

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pygrid.config import ServerSettings

__all__ = [
    "RETRY_SECONDS",
    "TOKEN_NAME",
    "fetch_worker_token",
    "publish_in_background",
    "publish_worker_token",
]

_LOG = logging.getLogger(__name__)

#: The name of the token the Node mints for its cloud Workers (``pygrid worker-token list``).
TOKEN_NAME = "cloud-workers"
#: Waits between attempts, in seconds; the last one repeats.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# Worker tokens start with this (pygrid.data_centric.worker_tokens.PREFIX, without its imports).
_TOKEN_PREFIX = "pgw_"
# Replicas of one Node share its data dir: this file's lock lets one of them publish at a time.
_LOCK_FILE = ".worker-token.lock"


def _wanted(settings: ServerSettings) -> bool:
    return settings.app == "node" and bool(settings.cloud) and bool(settings.worker_token_secret)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(data_dir / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def publish_worker_token(
    settings: ServerSettings,
    sessions: Callable[[], Session],
    store: SecretStore | None = None,
) -> int | None:
    """Make the Node's worker-token secret hold a live worker token; return that token's id.

    Returns None, doing nothing, unless ``settings`` are a Node's with ``cloud`` and
    ``worker_token_secret`` set. Reads the secret first: a value that authenticates on this Node
    stays. Otherwise mints a token named `TOKEN_NAME`, writes it, and only then keeps it (a failed
    write revokes it). Either way, other live `TOKEN_NAME` tokens (left by an interrupted start)
    are revoked. Secret-store errors propagate (`ProviderError`, `MissingCredentials`).

    Parameters
    ----------
    settings : ServerSettings
        The Node's settings: ``cloud`` names the secret store, ``worker_token_secret`` the secret.
    sessions : callable returning a Session
        The Node's session factory (``app.extensions["pygrid.db"].sessions``).
    store : SecretStore, optional
        Defaults to ``get_secret_store(settings.cloud)``; a given store is not closed.
    """
    if not _wanted(settings):
        return None
    from pygrid.data_centric import worker_tokens
    from pygrid.errors import PyGridError
    from pygrid.providers import get_secret_store

    secret = str(settings.worker_token_secret)
    own = store is None
    active = store if store is not None else get_secret_store(str(settings.cloud))
    try:
        with _locked(settings.data_dir), sessions() as session:
            published = active.read(secret)
            token_id: int | None = None
            if published and published.startswith(_TOKEN_PREFIX):
                try:
                    token_id = worker_tokens.authenticate(session, published.strip()).id
                except PyGridError:
                    token_id = None  # revoked, expired, or another database's token
            if token_id is None:
                token, text = worker_tokens.create_system_token(session, TOKEN_NAME)
                try:
                    active.write(secret, text)
                except BaseException:
                    worker_tokens.revoke_as_system(session, [token])
                    raise
                token_id = token.id
                _LOG.info("published worker token %s in %s", token_id, secret)
            stale = [
                token
                for token in worker_tokens.live_tokens_named(session, TOKEN_NAME)
                if token.id != token_id
            ]
            worker_tokens.revoke_as_system(session, stale)
            return token_id
    finally:
        if own:
            active.close()


def publish_in_background(
    settings: ServerSettings,
    sessions: Callable[[], Session],
    *,
    recheck_seconds: float = 300.0,
    retry_seconds: Sequence[float] = RETRY_SECONDS,
    stop: threading.Event | None = None,
    store_factory: Callable[[], SecretStore] | None = None,
) -> threading.Thread | None:
    """Run `publish_worker_token` in a daemon thread, retrying failures, then every few minutes.

    The Node starts serving at once: on a fresh VM its identity's access to the secret may take
    a minute to propagate, and the Workers wait for the token anyway. Each later pass notices a
    revoked token and publishes a new one. Returns the thread, or None when ``settings`` ask for
    no publishing (not a cloud Node).

    Parameters
    ----------
    recheck_seconds : float
        Seconds between passes once a pass succeeded.
    retry_seconds : sequence of float
        Waits after successive failures; the last one repeats.
    stop : threading.Event, optional
        Set it to end the thread (tests); the process exiting ends it too.
    store_factory : callable returning a SecretStore, optional
        Builds the store for each pass; defaults to ``get_secret_store(settings.cloud)``.
    """
    if not _wanted(settings):
        return None
    done = stop if stop is not None else threading.Event()

    def run() -> None:
        failures = 0
        while not done.is_set():
            try:
                store = store_factory() if store_factory is not None else None
                try:
                    publish_worker_token(settings, sessions, store)
                finally:
                    if store is not None:
                        store.close()
            except Exception as exc:  # logged and retried: the Node keeps serving meanwhile
                wait = retry_seconds[min(failures, len(retry_seconds) - 1)]
                failures += 1
                _LOG.warning(
                    "could not publish the worker token in %s (retrying in %g s): %s",
                    settings.worker_token_secret,
                    wait,
                    exc,
                )
            else:
                failures, wait = 0, recheck_seconds
            done.wait(wait)

    thread = threading.Thread(target=run, name="pygrid-worker-token", daemon=True)
    thread.start()
    return thread


def fetch_worker_token(
    cloud: str,
    secret: str,
    *,
    timeout: float | None = None,
    retry_seconds: Sequence[float] = RETRY_SECONDS,
    store: SecretStore | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> str:
    """Wait until ``secret`` holds a worker token (``pgw_...``) and return it: a Worker's start.

    The Node writes the token at its first start, which may come after the Workers'; until then
    the secret is empty. Secret-store errors are retried too (a fresh VM's identity may not reach
    the secret yet) and logged; a malformed secret name is not (`ValueError`).

    Parameters
    ----------
    cloud : str
        The secret store's name in ``pygrid.providers.SECRET_STORES`` (``aws``, ``gcp``, ...).
    secret : str
        The secret, as the Terraform module names it (``$PYGRID_WORKER_TOKEN_SECRET``).
    timeout : float, optional
        Give up with `TimeoutError` after this many seconds; None waits for ever.
    store : SecretStore, optional
        Defaults to ``get_secret_store(cloud)``; a given store is not closed.
    """
    from pygrid.providers import get_secret_store

    own = store is None
    active = store if store is not None else get_secret_store(cloud)
    deadline = None if timeout is None else clock() + timeout
    attempt = 0
    try:
        while True:
            problem = "it is empty (the Node has not published a token yet)"
            try:
                value = active.read(secret)
            except (MissingCredentials, ProviderError) as exc:
                value, problem = None, f"reading it failed: {exc}"
            if value is not None and value.strip().startswith(_TOKEN_PREFIX):
                return value.strip()
            if value is not None:
                problem = "it holds no worker token (pgw_...)"
            wait = retry_seconds[min(attempt, len(retry_seconds) - 1)]
            attempt += 1
            if deadline is not None and clock() + wait > deadline:
                raise TimeoutError(
                    f"no worker token in secret {secret} after {timeout:g} s: {problem}"
                )
            _LOG.info("waiting for the worker token in %s: %s", secret, problem)
            sleep(wait)
    finally:
        if own:
            active.close()
