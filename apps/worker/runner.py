"""Run one job directory: ``python -m pygrid.apps.worker.runner JOB_DIR``.

This is the child side of the sandbox (see `pygrid.apps.worker.sandbox`, which sets its limits and
environment). It reads ``job.json`` and ``data.safetensors`` (plus ``model.pt``, ``plan.pt``,
``params.safetensors`` when the job has them), runs the job's kind, writes ``result.safetensors``
and ``result.json`` (``{"metrics": {name: number}}``) and exits 0. On any failure it exits 1 and
the LAST line of its stderr is a one-line reason, which becomes the job's error.

Nothing heavy is imported here: a kind's module is imported when that kind runs, so a
``statistics`` job never loads torch.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "memory_message", "run"]

RESULT_TENSORS = "result.safetensors"
RESULT_JSON = "result.json"


def memory_message() -> str:
    """The error for an allocation that failed under the sandbox's address-space limit."""
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return "out of memory"
    return f"memory limit of {limit // 2**20} MB exceeded"


# how a refused allocation shows up: torch's allocator, C++, the dynamic loader (an import)
_MEMORY_SIGNS = ("can't allocate memory", "std::bad_alloc", "failed to map segment")


def _out_of_memory(exc: BaseException) -> bool:
    """True if ``exc``, or an exception that caused it, is an allocation refused."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or any(s in str(current) for s in _MEMORY_SIGNS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(exc: BaseException) -> str:
    """One line saying why the job failed."""
    from pygrid.apps.worker.jobs import JobError

    if _out_of_memory(exc):
        return memory_message()
    text = str(exc).strip()
    if isinstance(exc, JobError):
        return " ".join(text.split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        # the code traceback comes first, the error itself ("RuntimeError: ...") last
        return lines[-1]
    return f"{type(exc).__name__}: {lines[0]}"


def run(job_dir: Path) -> dict[str, float]:
    """Run the job in ``job_dir``, write its result files, return its metrics."""
    from pygrid.apps.worker import jobs

    job = jobs.Job.read(job_dir)
    result = jobs.run(job)
    metrics = {name: float(value) for name, value in result.metrics.items()}
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise jobs.JobError(f"metric {name!r} is {value}")
    (job_dir / RESULT_TENSORS).write_bytes(result.payload)
    # written last: its presence says the result is complete
    (job_dir / RESULT_JSON).write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 with the result written, 1 with the reason as the last stderr line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m pygrid.apps.worker.runner JOB_DIR", file=sys.stderr)
        return 2
    try:
        run(Path(args[0]))
    except Exception as exc:  # every failure must end as one readable line
        from pygrid.apps.worker.jobs import JobError

        if not isinstance(exc, JobError | MemoryError):
            traceback.print_exc(file=sys.stderr)  # for the Worker's operator; not the error
        print(_reason(exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
