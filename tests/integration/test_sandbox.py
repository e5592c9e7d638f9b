"""The sandbox around the runner: a real child process, its limits, its environment, its result.

The hogs are ordinary jobs whose TorchScript model passes the operator allowlist and then eats
memory or CPU: the sandbox, not the allowlist, is what stops them.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from safetensors.numpy import load_file, save_file
from torch import Tensor, nn

from pygrid.apps.worker import sandbox
from pygrid.apps.worker.sandbox import Limits, Outcome, run_job, runner_env

ALLOWED_ENV = {
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
}
SECRETS = {
    "SECRET_KEY": "s3cret-key",
    "PYGRID_SECRET_KEY": "s3cret-pygrid",
    "PYGRID_WORKER_TOKEN": "pgw_1_s3cret",
    "AWS_SECRET_ACCESS_KEY": "s3cret-aws",
    "PYTHONPATH": "/somewhere/else",
}


class MemoryHog(nn.Module):
    """Keeps allocating 256 MB blocks (from ``x``, so TorchScript cannot fold them into one)."""

    def forward(self, x: Tensor) -> Tensor:
        blocks = [x]
        for _ in range(1000):
            blocks.append(x.new_ones([64 * 1024 * 1024]))
        total = x
        for block in blocks:
            total = total + block[0]
        return total


class CpuHog(nn.Module):
    """Computes for ever."""

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(1000000000000):
            x = torch.tanh(x)
        return x


def write_job(
    job_dir: Path, kind: str, spec: dict[str, Any], model: nn.Module | None = None
) -> Path:
    """A small job directory as the Worker writes it: 8 rows of 3 features and a label."""
    job_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    columns: dict[str, np.ndarray] = {
        "x": rng.random((8, 3), dtype=np.float32),
        "age": np.arange(8, dtype=np.float32) * 10,
        "y": np.arange(8, dtype=np.int64) % 3,
    }
    save_file(columns, str(job_dir / "data.safetensors"))
    schema = {"rows": 8, "target": "y", "columns": [{"name": "age", "min": 0.0, "max": 100.0}]}
    job = {"job_id": 3, "kind": kind, "spec": spec, "schema": schema}
    (job_dir / "job.json").write_text(json.dumps(job))
    if model is not None:
        torch.jit.save(torch.jit.script(model), str(job_dir / "model.pt"))
    return job_dir


def evaluate_job(job_dir: Path, model: nn.Module) -> Path:
    spec = {"features": ["x"], "target": "y", "evaluate": {"loss": "cross_entropy"}}
    return write_job(job_dir, "evaluate", spec, model)


def statistics_job(job_dir: Path, column: str = "age") -> Path:
    spec = {"statistics": {"columns": [{"name": column, "stats": ["count", "sum"]}]}}
    return write_job(job_dir, "statistics", spec)


# --- the environment -------------------------------------------------------------------------


def test_the_runner_environment_holds_nothing_but_path_home_lang_and_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the Worker's own environment holds secrets
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    # Execute
    env = runner_env(tmp_path, threads=2)

    # Assert
    assert set(env) == ALLOWED_ENV
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["LANG"] == "C.UTF-8"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert not any("s3cret" in value for value in env.values())


@pytest.mark.slow
def test_a_live_runner_has_the_scrubbed_environment_the_limits_and_the_job_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: secrets in the parent, a job that computes until the wall clock stops it
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    job_dir = evaluate_job(tmp_path / "job", CpuHog())
    limits = Limits(memory_mb=2048, cpu_seconds=100, wall_seconds=6.0)
    started: queue.Queue[int] = queue.Queue()
    outcomes: list[Outcome] = []

    def run() -> None:
        outcomes.append(run_job(job_dir, limits, on_start=started.put))

    thread = threading.Thread(target=run)

    # Execute: look at the child from outside while it runs
    thread.start()
    child = psutil.Process(started.get(timeout=10))
    environ, cwd, argv = child.environ(), child.cwd(), child.cmdline()
    limits_text = Path(f"/proc/{child.pid}/limits").read_text()
    session = os.getsid(child.pid)
    thread.join(timeout=30)

    # Assert: the environment, working directory, limits and session
    assert set(environ) <= ALLOWED_ENV | {"LC_CTYPE"}  # the interpreter may set LC_CTYPE itself
    assert not any("s3cret" in value for value in environ.values())
    assert environ["HOME"] == environ["TMPDIR"] == cwd == str(job_dir)
    assert _limit(limits_text, "Max address space") == str(2048 * 2**20)
    assert _limit(limits_text, "Max cpu time") == "100"
    assert _limit(limits_text, "Max core file size") == "0"
    assert session == child.pid  # its own session, so its own process group to kill
    assert argv[1:] == ["-P", "-m", "pygrid.apps.worker.runner", str(job_dir)]
    # and the wall clock stopped it, killing its process group
    assert outcomes == [
        Outcome(False, {}, None, "wall-clock limit of 6 s exceeded", outcomes[0].seconds)
    ]
    assert outcomes[0].seconds >= 6.0
    assert not psutil.pid_exists(child.pid)


def test_a_runner_dies_with_its_worker_when_the_worker_is_killed(tmp_path: Path) -> None:
    # Prepare: a "Worker" process running a job that would compute for a minute
    job_dir = evaluate_job(tmp_path / "job", CpuHog())
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pygrid.apps.worker.sandbox import Limits, run_job\n"
        "limits = Limits(memory_mb=2048, cpu_seconds=60, wall_seconds=60.0)\n"
        "run_job(Path(sys.argv[1]), limits, on_start=lambda pid: print(pid, flush=True))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(job_dir)], stdout=subprocess.PIPE, text=True
    ) as worker:
        try:
            assert worker.stdout is not None
            runner = psutil.Process(int(worker.stdout.readline()))

            # Execute: SIGKILL the Worker, which gets no chance to kill its runner itself
            worker.kill()
            worker.wait(timeout=30)

            # Assert: the kernel took the runner along
            runner.wait(timeout=30)
            assert not runner.is_running()
        finally:
            worker.kill()


def _limit(text: str, name: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(name))
    return line[len(name) :].split()[0]


# --- running jobs ------------------------------------------------------------------------------


def test_a_job_runs_and_its_result_is_read(tmp_path: Path) -> None:
    # Prepare
    job_dir = statistics_job(tmp_path / "job")

    # Execute
    outcome = run_job(job_dir, Limits(memory_mb=1024, cpu_seconds=60, wall_seconds=60))

    # Assert
    assert outcome.ok, outcome.error
    assert outcome.error is None
    assert outcome.metrics == {"queries": 2.0}
    assert outcome.result_path == job_dir / "result.safetensors"
    result = load_file(str(outcome.result_path))
    assert float(result["age.count"]) == 8.0
    assert float(result["age.sum"]) == 280.0
    assert 0 < outcome.seconds < 60
    assert (job_dir / "runner.stdout").read_bytes() == b""


def test_a_model_job_runs_in_the_sandbox(tmp_path: Path) -> None:
    # Prepare
    torch.manual_seed(0)
    job_dir = evaluate_job(tmp_path / "job", nn.Linear(3, 3))

    # Execute
    outcome = run_job(job_dir)

    # Assert
    assert outcome.ok, outcome.error
    assert set(outcome.metrics) == {"loss", "accuracy", "rows"}
    assert outcome.metrics["rows"] == 8.0


def test_a_failing_job_reports_the_runners_last_stderr_line(tmp_path: Path) -> None:
    job_dir = statistics_job(tmp_path / "job", column="nope")

    outcome = run_job(job_dir)

    assert not outcome.ok
    assert outcome.error == "column 'nope' is not in the dataset"
    assert outcome.result_path is None


def test_a_stale_result_from_an_earlier_run_is_not_reported(tmp_path: Path) -> None:
    # Prepare: a result left behind, then a job that fails
    job_dir = statistics_job(tmp_path / "job", column="nope")
    (job_dir / "result.json").write_text('{"metrics": {}}')
    (job_dir / "result.safetensors").write_bytes(b"old")

    # Execute
    outcome = run_job(job_dir)

    # Assert
    assert not outcome.ok
    assert not (job_dir / "result.json").exists()


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("", "invalid result: the runner wrote no result.json"),
        ("open('result.json', 'w').write('[1]')", "must be an object with an object 'metrics'"),
        (
            "open('result.json', 'w').write('{\"metrics\": {\"a\": \"x\"}}')",
            "metric 'a' is not a number",
        ),
        ("open('result.json', 'w').write('{\"metrics\": {\"a\": NaN}}')", "metric 'a' is nan"),
        ("open('result.json', 'w').write('{\"metrics\": {\"a\": 1}}')", "no result.safetensors"),
    ],
)
def test_a_runner_that_writes_a_bad_result_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, error: str
) -> None:
    # Prepare: a stand-in runner that exits 0 after writing ``script``'s result
    monkeypatch.setattr(sandbox, "runner_command", lambda job_dir: [sys.executable, "-c", script])

    # Execute
    outcome = run_job(tmp_path)

    # Assert
    assert not outcome.ok
    assert outcome.error is not None and error in outcome.error


# --- limits ------------------------------------------------------------------------------------


def test_a_memory_hog_is_stopped_with_the_memory_message(tmp_path: Path) -> None:
    job_dir = evaluate_job(tmp_path / "job", MemoryHog())

    outcome = run_job(job_dir, Limits(memory_mb=1024, wall_seconds=60))

    assert not outcome.ok
    assert outcome.error == "memory limit of 1024 MB exceeded"


@pytest.mark.slow
def test_a_cpu_hog_is_killed_at_the_cpu_limit(tmp_path: Path) -> None:
    job_dir = evaluate_job(tmp_path / "job", CpuHog())

    outcome = run_job(job_dir, Limits(cpu_seconds=3, wall_seconds=60))

    assert not outcome.ok
    assert outcome.error == "CPU time limit exceeded (3 s)"
    assert outcome.seconds < 30
