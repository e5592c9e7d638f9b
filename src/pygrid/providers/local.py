"""The reference provider: a Worker group is a set of local processes (``pygrid up``, tests).

Each group lives in a folder ``<root>/<group>/`` holding ``state.json`` (bounds, desired size,
command, members by PID and process start time), a ``lock`` file serialising changes across
threads and processes, and one ``<instance id>.log`` per process with its output.

The reference secret store, `LocalSecretStore`, keeps each secret in a 0600 file of a 0700 folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from pygrid.providers.base import (
    CloudProvider,
    GroupNotFound,
    GroupStatus,
    Instance,
    ProviderError,
    SecretStore,
    check_desired,
    check_secret_value,
    check_size,
)

__all__ = ["DEFAULT_ROOT", "LocalProvider", "LocalSecretStore", "default_command"]

#: Where groups live unless the constructor is given another folder.
DEFAULT_ROOT = "~/.pygrid/groups"
# A local secret's name is a file name: no separators, no leading dot.
_SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A group name is also a folder name: no separators, no leading dot.
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_STATE_VERSION = 1
# Two reads of one process's start time agree to the clock tick (10 ms); a reused PID does not.
_START_TIME_TOLERANCE = 0.05
_STOPPED_STATUSES = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})
_DEAD_STATUSES = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def default_command() -> list[str]:
    """The command a Worker process runs when a group is created without one."""
    return [sys.executable, "-m", "pygrid.cli", "worker"]


class LocalProvider(CloudProvider):
    """Worker groups as local processes, each started from the group's command.

    `resize` starts processes (in their own session, output to a log file, with
    ``PYGRID_WORKER_GROUP`` and ``PYGRID_WORKER_ID`` in their environment) or stops the newest
    ones: SIGTERM to the process group, then SIGKILL after ``stop_timeout`` seconds. A process is
    identified by its PID *and* start time, so a reused PID is never signalled. A member that
    died on its own is reported ``"terminated"`` until the next `resize` replaces it.

    Parameters
    ----------
    root : path, optional
        The folder holding the groups; defaults to `DEFAULT_ROOT`.
    command : sequence of str, optional
        The command of groups created without one; defaults to `default_command`.
    stop_timeout : float
        Seconds a process has to exit after SIGTERM before it is killed.
    """

    name = "local"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        command: Sequence[str] | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root if root is not None else DEFAULT_ROOT).expanduser().absolute()
        self.command = list(command) if command is not None else default_command()
        if not self.command:
            raise ValueError("the Worker command must not be empty")
        self.stop_timeout = stop_timeout

    def __repr__(self) -> str:
        return f"LocalProvider(root={str(self.root)!r})"

    # --- groups ----------------------------------------------------------------------------------

    def create_group(
        self,
        group: str,
        minimum: int,
        maximum: int,
        command: Sequence[str] | None = None,
        desired: int | None = None,
    ) -> GroupStatus:
        """Create ``group`` with these bounds and start ``desired`` (default ``minimum``) processes.

        Raises `ValueError` for a bad name or bounds, or if the group exists already, and
        `ProviderError` if the command cannot be started (the group is then not created).
        """
        if not isinstance(group, str) or not _GROUP_NAME.match(group):
            raise ValueError(
                f"invalid group name {group!r}: use 1-63 letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        check_desired(minimum)
        check_desired(maximum)
        if not 0 <= minimum <= maximum:
            raise ValueError(f"invalid bounds [{minimum}, {maximum}]: need 0 <= minimum <= maximum")
        argv = list(command) if command is not None else list(self.command)
        if not argv or not all(isinstance(arg, str) for arg in argv):
            raise ValueError("the Worker command must be a non-empty list of strings")
        folder = self.root / group
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            raise ValueError(f"Worker group {group!r} exists already in {self.root}") from None
        state = {
            "version": _STATE_VERSION,
            "group": group,
            "minimum": minimum,
            "maximum": maximum,
            "desired": 0,
            "command": argv,
            "instances": [],
        }
        _write_json(folder / "state.json", state)
        try:
            self.resize(group, minimum if desired is None else desired)
        except BaseException:
            self.delete_group(group)
            raise
        return self.group_status(group)

    def delete_group(self, group: str) -> None:
        """Stop every process of ``group`` and forget it; a missing group is not an error."""
        try:
            with self._locked(group) as state:
                self._stop([*state["instances"]])
                state["instances"] = []
                shutil.rmtree(self.root / group)
        except GroupNotFound:
            return

    def list_groups(self) -> list[str]:
        """The names of the groups under `root`, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/state.json"))

    # --- the contract ----------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """Local processes need no credentials: always passes."""

    def group_status(self, group: str) -> GroupStatus:
        """Bounds and desired size from the state file; each member's state from its process."""
        with self._locked(group) as state:
            instances = [
                Instance(record["id"], self._record_state(record)) for record in state["instances"]
            ]
            return GroupStatus(
                group=group,
                desired=state["desired"],
                minimum=state["minimum"],
                maximum=state["maximum"],
                instances=sorted(instances, key=lambda instance: instance.id),
            )

    def resize(self, group: str, desired: int) -> None:
        """Drop dead members, then start or stop processes until ``desired`` run."""
        desired = check_desired(desired)
        with self._locked(group) as state:
            check_size(group, desired, state["minimum"], state["maximum"])
            live = [r for r in state["instances"] if self._record_state(r) != "terminated"]
            # Newest last: scale-in stops the newest processes first.
            live.sort(key=lambda record: record["started_at"])
            extra = live[desired:]
            self._stop(extra)
            live = live[:desired]
            try:
                while len(live) < desired:
                    live.append(self._start(group, state["command"], {r["id"] for r in live}))
            finally:
                # Even if a start failed: the processes that did start stay tracked.
                state["instances"] = live
            state["desired"] = desired

    def instance_state(self, instance_id: str) -> str:
        """``"running"`` (``"stopped"`` if suspended) while the process lives, else terminated.

        Members that were stopped or removed are forgotten, hence ``"terminated"``.
        """
        if not isinstance(instance_id, str) or not instance_id:
            raise ValueError(f"invalid local instance id {instance_id!r}")
        for group in self.list_groups():
            try:
                with self._locked(group) as state:
                    for record in state["instances"]:
                        if record["id"] == instance_id:
                            return self._record_state(record)
            except GroupNotFound:  # deleted meanwhile
                continue
        return "terminated"

    # --- processes -------------------------------------------------------------------------------

    def _start(self, group: str, command: list[str], taken: set[str]) -> dict[str, Any]:
        instance_id = f"{group}-{secrets.token_hex(4)}"
        while instance_id in taken:
            instance_id = f"{group}-{secrets.token_hex(4)}"
        env = {**os.environ, "PYGRID_WORKER_GROUP": group, "PYGRID_WORKER_ID": instance_id}
        log = os.open(
            self.root / group / f"{instance_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            # posix_spawn, not Popen: no Popen object outlives this call to warn "subprocess is
            # still running" when the provider goes away while its Workers (rightly) keep running.
            # A session of its own: Ctrl-C in the terminal does not reach it, and stopping it can
            # signal its whole process group (a Worker's own children included).
            pid = os.posix_spawnp(
                command[0],
                command,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise ProviderError(f"cannot start Worker command {command!r}: {exc}") from exc
        finally:
            os.close(log)
        try:
            # Our child is not reaped yet, so this works even if the command exited at once.
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started = 0.0
        return {
            "id": instance_id,
            "pid": pid,
            "create_time": started,
            "started_at": time.time(),
            "command": command,
        }

    def _process(self, record: dict[str, Any]) -> psutil.Process | None:
        """The live process of ``record``, or None if it exited or its PID now names another."""
        try:
            process = psutil.Process(record["pid"])
            if abs(process.create_time() - record["create_time"]) > _START_TIME_TOLERANCE:
                return None
            if process.status() in _DEAD_STATUSES:
                _reap(process.pid)  # it is ours (same start time): reaping it cannot steal another
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return process

    def _record_state(self, record: dict[str, Any]) -> str:
        process = self._process(record)
        if process is None:
            return "terminated"
        try:
            status = process.status()
        except psutil.NoSuchProcess:
            return "terminated"
        return "stopped" if status in _STOPPED_STATUSES else "running"

    def _stop(self, records: list[dict[str, Any]]) -> None:
        """SIGTERM, wait up to `stop_timeout`, SIGKILL what is left and wait for it to go."""
        alive = [r for r in records if self._process(r) is not None]
        for signum, timeout in [(signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)]:
            for record in alive:
                process = self._process(record)
                if process is not None:
                    _signal(process, signum)
            deadline = time.monotonic() + timeout
            while alive and time.monotonic() < deadline:
                time.sleep(0.01)
                alive = [r for r in alive if self._process(r) is not None]
            if not alive:
                return
        raise ProviderError(f"Worker processes survived SIGKILL: {[r['pid'] for r in alive]}")

    # --- state file ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, group: str) -> Iterator[dict[str, Any]]:
        """Yield the group's state under its lock; write it back if the block changed it."""
        if not isinstance(group, str) or not _GROUP_NAME.match(group):
            raise GroupNotFound(f"no Worker group {group!r}: not a valid local group name")
        folder = self.root / group
        try:
            lock = open(folder / "lock", "a")
        except (FileNotFoundError, NotADirectoryError):
            raise GroupNotFound(f"no Worker group {group!r} in {self.root}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = (folder / "state.json").read_text()
            except FileNotFoundError:
                raise GroupNotFound(f"no Worker group {group!r} in {self.root}") from None
            state = json.loads(text)
            before = json.dumps(state, sort_keys=True)
            try:
                yield state
            finally:
                # Also when the block failed half-way: it keeps the state consistent as it goes.
                if folder.is_dir() and json.dumps(state, sort_keys=True) != before:
                    _write_json(folder / "state.json", state)


class LocalSecretStore(SecretStore):
    """Secrets as files ``<root>/<name>`` (0600, in a 0700 folder), replaced atomically.

    For ``pygrid up`` and tests: a local Node and its local Workers share the folder.

    Parameters
    ----------
    root : path, optional
        The folder; defaults to ``$PYGRID_HOME/secrets`` (``~/.pygrid/secrets``).
    """

    name = "local"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from pygrid.config import pygrid_home

            root = pygrid_home() / "secrets"
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalSecretStore(root={str(self.root)!r})"

    def _path(self, secret: str) -> Path:
        if not isinstance(secret, str) or not _SECRET_NAME.match(secret):
            raise ValueError(
                f"invalid local secret name {secret!r}: use 1-128 letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        return self.root / secret

    def read(self, secret: str) -> str | None:
        """The file's content, or None if there is no file."""
        path = self._path(secret)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(f"cannot read secret {secret!r} in {self.root}: {exc}") from exc

    def write(self, secret: str, value: str) -> None:
        """Replace the file atomically and durably (a reader sees the old or the new value)."""
        path = self._path(secret)
        check_secret_value(value)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.root, prefix=".secret-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
                    file.write(value)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise ProviderError(f"cannot write secret {secret!r} in {self.root}: {exc}") from exc


def _reap(pid: int) -> None:
    """Collect the exit status of our exited child ``pid`` (no-op for another's process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal(process: psutil.Process, signum: signal.Signals) -> None:
    """Signal the process group the Worker leads (it was started in its own session), or it."""
    try:
        if os.getpgid(process.pid) == process.pid and process.is_running():
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, so a reader never sees half a state file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
