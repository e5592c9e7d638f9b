"""Run a job directory in a resource-limited child process: the parent side of the sandbox.

`run_job` starts ``python -P -m pygrid.apps.worker.runner JOB_DIR`` (``-P``: the job directory,
its working directory, is not put on ``sys.path``) in a new session, with:

* limits set in the child before ``exec``: address space (``RLIMIT_AS``), CPU time
  (``RLIMIT_CPU``: SIGXCPU at the limit, SIGKILL two seconds later), no core dumps;
* a wall-clock limit enforced here, by killing the child's whole process group;
* an environment holding nothing but ``PATH``, ``HOME`` and ``TMPDIR`` (the job directory),
  ``LANG`` and thread counts (`runner_env`): the Worker's token and any secret in its environment
  stay out. Nothing else is needed to import pygrid: an installed (or editable) pygrid is found
  through site-packages;
* stdin from /dev/null, stdout and stderr to ``runner.stdout`` / ``runner.stderr`` in the job
  directory.

The default address-space limit is 4096 MB. Address space, not resident memory: torch maps its
libraries and reserves ranges it never touches. Measured with torch 2.13 (CPU) and one thread: a
``statistics`` job (NumPy only) runs in 128 MB; the digits DP-SGD job (torch, and ``torch.optim``,
which imports ``torch._dynamo``) needs between 640 and 768 MB and fails below that, at 384 MB with
C++ aborting on ``std::bad_alloc``. 4096 MB leaves room for real data and models.

The limits are applied in ``preexec_fn``, between ``fork`` and ``exec``. Python warns that this is
unsafe in a multi-threaded parent (another thread may hold a lock the child then needs); the hook
here only calls ``resource.setrlimit`` with numbers computed beforehand, and ``resource`` is
imported at module level, so the child takes no import lock and allocates nothing to speak of.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Limits", "Outcome", "run_job", "runner_command", "runner_env"]

RUNNER_MODULE = "pygrid.apps.worker.runner"
STDOUT_FILE = "runner.stdout"
STDERR_FILE = "runner.stderr"
RESULT_TENSORS = "result.safetensors"
RESULT_JSON = "result.json"
# after SIGXCPU at the soft CPU limit, the kernel sends SIGKILL at the hard one
_CPU_GRACE_SECONDS = 2
_MAX_ERROR_CHARS = 2000
# how native code reports an allocation refused under RLIMIT_AS (lower case)
_MEMORY_SIGNS = (
    "std::bad_alloc",
    "memory allocation",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to map segment",
)


@dataclass(frozen=True)
class Limits:
    """Resources one job may use; see the module docstring for the memory default."""

    memory_mb: int = 4096
    cpu_seconds: int = 3600
    wall_seconds: float = 3600.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.memory_mb < 1 or self.cpu_seconds < 1 or self.threads < 1:
            raise ValueError(f"limits must be positive: {self}")
        if not (self.wall_seconds > 0 and math.isfinite(self.wall_seconds)):
            raise ValueError(f"wall_seconds must be positive and finite: {self}")


@dataclass(frozen=True)
class Outcome:
    """How a job run ended: its metrics and result file, or a one-line error."""

    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    result_path: Path | None = None
    error: str | None = None
    seconds: float = 0.0


def runner_env(job_dir: Path, threads: int = 1) -> dict[str, str]:
    """The runner's whole environment: no token, no secret, nothing inherited but ``PATH``."""
    count = str(threads)
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(job_dir),
        "TMPDIR": str(job_dir),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
    }


def runner_command(job_dir: Path) -> list[str]:
    """The runner's argv, with this interpreter."""
    return [sys.executable, "-P", "-m", RUNNER_MODULE, str(job_dir)]


def _capped(limit: int, kind: int) -> int:
    # an unprivileged process cannot raise its hard limit: stay under the inherited one
    _, hard = resource.getrlimit(kind)
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


def _set_limits(limits: Limits) -> Callable[[], None]:
    memory = _capped(limits.memory_mb * 2**20, resource.RLIMIT_AS)
    cpu_hard = _capped(limits.cpu_seconds + _CPU_GRACE_SECONDS, resource.RLIMIT_CPU)
    cpu_soft = min(limits.cpu_seconds, cpu_hard)

    die_with_parent = _parent_death_signal()
    parent = os.getpid()

    def apply() -> None:  # runs in the child between fork and exec: keep it to system calls
        if die_with_parent is not None:
            # A Worker killed with SIGKILL takes its runner along (the kernel sends SIGKILL when
            # the forking thread ends), instead of leaving it to compute for nobody.
            die_with_parent(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


_PR_SET_PDEATHSIG = 1


@functools.cache
def _parent_death_signal() -> Callable[..., int] | None:
    """libc's prctl, resolved before fork (nothing is looked up in the child); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _stderr_tail(path: Path) -> list[str]:
    """The non-empty lines of the last 64 KB of the runner's stderr."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            text = file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _out_of_memory(lines: list[str]) -> bool:
    """True if native code (C++, OpenBLAS, the loader) said an allocation was refused."""
    return any(sign in line.lower() for line in lines for sign in _MEMORY_SIGNS)


def _read_metrics(job_dir: Path) -> dict[str, float]:
    """``result.json``'s metrics; ValueError unless an object of finite numbers."""
    try:
        data = json.loads((job_dir / RESULT_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"the runner wrote no {RESULT_JSON}") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise ValueError(f"{RESULT_JSON} must be an object with an object 'metrics'")
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric {name!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is {value}")
        checked[name] = float(value)
    return checked


def _failure(status: int, usage: resource.struct_rusage, limits: Limits, job_dir: Path) -> str:
    """The error of a runner that did not exit 0."""
    memory = f"memory limit of {limits.memory_mb} MB exceeded"
    lines = _stderr_tail(job_dir / STDERR_FILE)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
            return f"CPU time limit exceeded ({limits.cpu_seconds} s)"
        if _out_of_memory(lines[-5:]):  # e.g. C++ aborting on std::bad_alloc
            return memory
        if sig == signal.SIGKILL:
            return f"the runner was killed by SIGKILL (out of memory? the limit is {limits.memory_mb} MB)"
        return f"the runner died of {signal.Signals(sig).name}"
    if not lines:
        return f"the runner exited with {os.WEXITSTATUS(status)} and no message"
    if _out_of_memory(lines[-1:]):
        return memory
    return lines[-1][:_MAX_ERROR_CHARS]


def run_job(
    job_dir: Path, limits: Limits = Limits(), *, on_start: Callable[[int], None] | None = None
) -> Outcome:
    """Run the job in ``job_dir`` under ``limits``; never raises for a failing job.

    ``on_start`` gets the runner's pid, which is also its process group's id and stays valid
    (not reaped, so not reused) until `run_job` returns: a caller may ``killpg`` it to cancel.
    """
    job_dir = Path(job_dir).resolve()
    for stale in (RESULT_JSON, RESULT_TENSORS):
        (job_dir / stale).unlink(missing_ok=True)
    start = time.monotonic()
    try:
        with open(job_dir / STDOUT_FILE, "wb") as out, open(job_dir / STDERR_FILE, "wb") as err:
            process = subprocess.Popen(
                runner_command(job_dir),
                cwd=job_dir,
                env=runner_env(job_dir, limits.threads),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_set_limits(limits),
            )
    except (OSError, subprocess.SubprocessError) as exc:
        error = f"could not start the runner: {exc}"
        return Outcome(False, error=error, seconds=time.monotonic() - start)
    timed_out = False
    try:
        if on_start is not None:
            on_start(process.pid)
        deadline = start + limits.wall_seconds
        pause = 0.005
        # WNOWAIT: the exited child stays a zombie, so its pid (the group id) cannot be reused
        # before the group is killed below
        while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                timed_out = True
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    finally:
        _kill_group(process.pid)  # on timeout, and any process the runner left behind
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start

    if timed_out:
        error = f"wall-clock limit of {limits.wall_seconds:g} s exceeded"
        return Outcome(False, error=error, seconds=seconds)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        return Outcome(False, error=_failure(status, usage, limits, job_dir), seconds=seconds)
    try:
        metrics = _read_metrics(job_dir)
    except (ValueError, UnicodeDecodeError) as exc:
        return Outcome(False, error=f"invalid result: {exc}", seconds=seconds)
    result_path = job_dir / RESULT_TENSORS
    if not result_path.is_file():
        return Outcome(False, error=f"invalid result: no {RESULT_TENSORS}", seconds=seconds)
    return Outcome(True, metrics, result_path, None, seconds)
