"""``pygrid worker`` against a real ``pygrid node``: claim, run, report, lose a lease, get refused.

Everything runs as the user would run it: a Node process, Worker processes, HTTP on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest
import requests

from tests.support.servers import free_port, running
from tests.support.users import PASSWORD

pytestmark = pytest.mark.slow

OWNER = "owner@example.org"
# Short leases, so a lost Worker's job comes back quickly; the Worker heartbeats every second.
LEASE_SECONDS = "3"
DEADLINE = 120.0

T = TypeVar("T")


@dataclass
class Node:
    """A running Node and an HTTP session logged in as its Owner."""

    url: str
    http: requests.Session
    log: Path

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> requests.Response:
        """A request as the Owner that must answer ``expect``."""
        response = self.http.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.text}"
        return response

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the Owner sees it."""
        job: dict[str, Any] = self.call("GET", f"/data-centric/jobs/{job_id}").json()
        return job

    def worker_token(self, name: str = "test-worker") -> dict[str, Any]:
        """A new worker token: ``{id, name, token, expires_at}``."""
        created: dict[str, Any] = self.call(
            "POST", "/data-centric/worker-tokens", expect=201, json={"name": name}
        ).json()
        return created

    def upload_csv(self, name: str, text: str, target: str | None = None) -> int:
        """Upload a CSV dataset; its id."""
        form = {"name": name, "description": "test data", "tags": "test"}
        if target:
            form["target"] = target
        response = self.call(
            "POST",
            "/data-centric/datasets",
            expect=201,
            data=form,
            files={"data": (f"{name}.csv", text.encode(), "text/csv")},
        )
        return int(response.json()["id"])

    def submit_and_approve(
        self, spec: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> int:
        """Submit a job as the Owner (who may submit) and approve it; its id."""
        parts: dict[str, Any] = {"spec": (None, json.dumps(spec))}
        for name, data in (files or {}).items():
            parts[name] = (f"{name}.bin", data, "application/octet-stream")
        job = self.call("POST", "/data-centric/jobs", expect=201, files=parts).json()
        assert job["state"] == "pending_review", job
        approved = self.call(
            "POST", f"/data-centric/jobs/{job['id']}/approve", json={"reason": "looks fine"}
        ).json()
        assert approved["state"] == "queued", approved
        return int(job["id"])

    def events(self, job_id: int, action: str) -> list[dict[str, Any]]:
        """The audit events of one action on one job."""
        events: list[dict[str, Any]] = self.call(
            "GET", "/data-centric/audit", params={"job_id": job_id, "action": action}
        ).json()["events"]
        return events


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A fresh Node on a free port, with a known Owner and short leases."""
    port = free_port()
    env = {
        "PYGRID_HOME": str(tmp_path / "home"),
        "PYGRID_OWNER_EMAIL": OWNER,
        "PYGRID_OWNER_PASSWORD": PASSWORD,
        "PYGRID_LEASE_SECONDS": LEASE_SECONDS,
    }
    args = ["node", "--port", str(port), "--data-dir", str(tmp_path / "node")]
    with running(args, port, tmp_path / "node.log", env=env) as server, requests.Session() as http:
        http.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names
        login = http.post(
            f"{server.url}/users/login", json={"email": OWNER, "password": PASSWORD}, timeout=30
        )
        assert login.status_code == 200, login.text
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield Node(server.url, http, server.log)


@dataclass
class Worker:
    """A ``pygrid worker`` process and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    work_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def worker(node: Node, token: str, log: Path, *args: str) -> Iterator[Worker]:
    """Run ``pygrid worker`` with the token in its environment; stop it (and its jobs) after."""
    # Job folders under the test's tmp: a killed Worker cannot delete its own.
    work_dir = log.with_suffix(".jobs")
    command = [
        sys.executable, "-m", "pygrid.cli", "worker",
        "--node", node.url, "--poll-wait", "1", "--grace-seconds", "5",
        "--work-dir", str(work_dir), *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYGRID_WORKER_TOKEN": token},
            start_new_session=True,
        )
    try:
        yield Worker(process, log, work_dir)
    finally:
        kill_tree(process, signal.SIGTERM)


def kill_tree(process: subprocess.Popen[bytes], how: signal.Signals) -> None:
    """Signal the Worker; SIGKILL whatever of it and its sandboxes is left after 15 s."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.Error:
        family = []
    if process.poll() is None:
        process.send_signal(how)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    for proc in family:
        try:
            proc.kill()
        except psutil.Error:
            pass


def wait_for(what: str, check: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


AGES = [23, 35, 47, 51, 62, 18, 29, 90, 105, 41, 33, 77]
INCOMES = [1.5, 2.25, 3.0, 4.5, 5.0, 0.5, 2.0, 7.25, 1.0, 3.5, 2.75, 6.0]


def people_csv() -> str:
    rows = [f"{age},{income}" for age, income in zip(AGES, INCOMES, strict=True)]
    return "age,income\n" + "\n".join(rows) + "\n"


def test_worker_runs_a_statistics_job_and_the_released_numbers_match_numpy(
    node: Node, tmp_path: Path
) -> None:
    dataset = node.upload_csv("people", people_csv())
    spec = {
        "dataset_id": dataset,
        "kind": "statistics",
        "statistics": {
            "columns": [
                {
                    "name": "age",
                    "stats": ["count", "sum", "mean", "histogram"],
                    "lower": 0,
                    "upper": 100,
                    "bins": 5,
                }
            ]
        },
    }
    job_id = node.submit_and_approve(spec)
    token = node.worker_token()

    with worker(node, token["token"], tmp_path / "worker.log", "--label", "w1") as w:
        finished = wait_for(
            "the job to finish",
            lambda: (job := node.job(job_id))["state"] in ("finished", "failed") and job,
        )
        assert finished["state"] == "finished", f"{finished}\n{w.output()}"
        log = w.output()

    released = node.call("POST", f"/data-centric/jobs/{job_id}/release").json()
    result = load_safetensors(node.call("GET", f"/data-centric/jobs/{job_id}/result").content)

    assert released["state"] == "released"
    ages = np.clip(np.array(AGES, dtype=np.float64), 0, 100)
    histogram, edges = np.histogram(ages, bins=5, range=(0, 100))
    assert float(result["age.count"]) == pytest.approx(len(AGES))
    assert float(result["age.sum"]) == pytest.approx(ages.sum())
    assert float(result["age.mean"]) == pytest.approx(ages.mean())
    np.testing.assert_allclose(result["age.histogram"], histogram)
    np.testing.assert_allclose(result["age.bin_edges"], edges)
    assert f"claimed job {job_id} (statistics, dataset {dataset})" in log
    assert f"job {job_id} finished in" in log
    assert token["token"] not in log
    assert list(w.work_dir.iterdir()) == []  # the job's private folder is gone
    # The Node knows which Worker ran it.
    assert node.events(job_id, "job.claim")[0]["detail"]["worker"] == "w1"


def test_worker_with_a_revoked_token_exits_2_with_a_clear_message(
    node: Node, tmp_path: Path
) -> None:
    token = node.worker_token()

    with worker(node, token["token"], tmp_path / "worker.log") as w:
        wait_for("the Worker to ask for work", lambda: "serving" in w.output())
        node.call("DELETE", f"/data-centric/worker-tokens/{token['id']}", expect=204)
        code = wait_for("the Worker to exit", w.process.poll, timeout=60)
        output = w.output()

    assert code == 2, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: the Node refused the worker token"), output
    assert "revoked" in last
    assert token["token"] not in output


def test_worker_refuses_a_token_unknown_to_the_node_at_start(node: Node, tmp_path: Path) -> None:
    with worker(node, "pgw_999_" + "x" * 40, tmp_path / "worker.log") as w:
        code = wait_for("the Worker to exit", w.process.poll, timeout=60)
        output = w.output()

    assert code == 2, output
    assert output.strip().splitlines()[-1].startswith("Error: the Node refused the worker token")


def runners(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The sandboxed job runners a Worker process has started and that still run."""
    found = []
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            if "pygrid.apps.worker.runner" in child.cmdline():
                found.append(child)
        except psutil.Error:
            pass
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def slow_training_job(node: Node, epochs: int = 100) -> int:
    """A train job that takes a while: many epochs of batch size 1 over a small dataset."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x.sum(axis=1) > 0).astype(int)
    lines = [
        ",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    text = "a,b,c,d,y\n" + "\n".join(lines) + "\n"
    dataset = node.upload_csv("points", text, target="y")
    model = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), model)
    spec = {
        "dataset_id": dataset,
        "kind": "train",
        "features": ["a", "b", "c", "d"],
        "target": "y",
        "train": {"epochs": epochs, "batch_size": 1, "lr": 0.01, "loss": "cross_entropy"},
    }
    return node.submit_and_approve(spec, files={"model": model.getvalue()})


def test_a_job_whose_worker_dies_is_finished_by_another_and_released_once(
    node: Node, tmp_path: Path
) -> None:
    job_id = slow_training_job(node)
    token = node.worker_token()["token"]

    with worker(node, token, tmp_path / "first.log", "--label", "first") as first:
        wait_for(
            "the first Worker to claim the job", lambda: node.job(job_id)["state"] == "running"
        )
        wait_for("its job folder", lambda: list(first.work_dir.iterdir()))
        # A crash: the Worker and its sandbox vanish without a word to the Node.
        kill_tree(first.process, signal.SIGKILL)
    assert node.job(job_id)["state"] in ("running", "queued"), "it finished before the crash"
    (left_behind,) = first.work_dir.iterdir()  # the private data a dead Worker cannot remove

    # The next Worker on the same folder removes it.
    with worker(node, token, tmp_path / "first.log", "--label", "second") as second:
        finished = wait_for(
            "the second Worker to finish the job",
            lambda: (job := node.job(job_id))["state"] in ("finished", "failed") and job,
            timeout=300,
        )
        assert finished["state"] == "finished", f"{finished}\n{second.output()}"

    node.call("POST", f"/data-centric/jobs/{job_id}/release")
    node.call("POST", f"/data-centric/jobs/{job_id}/release", expect=409)
    result = load_safetensors(node.call("GET", f"/data-centric/jobs/{job_id}/result").content)

    assert finished["attempts"] == 2
    assert not left_behind.exists()
    assert f"removed {left_behind}, left behind by a Worker that was killed" in second.output()
    assert set(result) >= {"weight", "bias"}
    assert result["weight"].shape == (2, 4)
    claims = node.events(job_id, "job.claim")
    assert sorted(e["detail"]["worker"] for e in claims) == ["first", "second"]
    assert len(node.events(job_id, "job.requeue")) == 1
    assert len(node.events(job_id, "job.finish")) == 1
    assert len(node.events(job_id, "job.release")) == 1


def test_a_worker_that_lost_its_lease_kills_the_job_and_uploads_nothing(
    node: Node, tmp_path: Path
) -> None:
    job_id = slow_training_job(node)
    token = node.worker_token()["token"]

    with (
        worker(node, token, tmp_path / "first.log", "--label", "first") as first,
        worker(node, token, tmp_path / "second.log", "--label", "second") as second,
    ):
        # Whichever Worker claims first is frozen until the other one takes the job over.
        wait_for("a Worker to claim the job", lambda: node.job(job_id)["state"] == "running")
        label = node.events(job_id, "job.claim")[0]["detail"]["worker"]
        frozen, other = (first, second) if label == "first" else (second, first)
        runner = wait_for("its sandboxed runner", lambda: runners(frozen.process))[0]
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            wait_for(
                "the other Worker to claim it", lambda: len(node.events(job_id, "job.claim")) == 2
            )
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        wait_for("the frozen Worker to kill its job", lambda: gone(runner))
        finished = wait_for(
            "the other Worker to finish the job",
            lambda: (job := node.job(job_id))["state"] in ("finished", "failed") and job,
            timeout=300,
        )
        frozen_log, other_log = frozen.output(), other.output()

    assert finished["state"] == "finished", f"{finished}\n{other_log}"
    assert f"job {job_id}: lease lost; killing it" in frozen_log
    assert f"job {job_id} finished" not in frozen_log
    assert f"job {job_id} finished" in other_log
    finishes = node.events(job_id, "job.finish")
    assert len(finishes) == 1


def test_sigterm_lets_the_running_job_finish_and_upload(node: Node, tmp_path: Path) -> None:
    job_id = slow_training_job(node, epochs=10)
    token = node.worker_token()["token"]

    with worker(node, token, tmp_path / "worker.log", "--grace-seconds", "120") as w:
        wait_for("the Worker to claim the job", lambda: node.job(job_id)["state"] != "queued")
        w.process.send_signal(signal.SIGTERM)
        wait_for("the Worker to exit", lambda: w.process.poll() is not None, timeout=150)
        output = w.output()

    assert w.process.returncode == 0, output
    assert node.job(job_id)["state"] == "finished", output
    assert output.strip().splitlines()[-1] == "PyGrid worker stopped"


def test_sigterm_with_no_grace_kills_the_running_job_for_the_node_to_requeue(
    node: Node, tmp_path: Path
) -> None:
    job_id = slow_training_job(node)
    token = node.worker_token()["token"]

    with worker(node, token, tmp_path / "worker.log", "--grace-seconds", "0") as w:
        runner = wait_for("the sandboxed runner", lambda: runners(w.process))[0]
        w.process.send_signal(signal.SIGTERM)
        wait_for("the Worker to exit", lambda: w.process.poll() is not None, timeout=60)
        output = w.output()

    assert w.process.returncode == 0, output
    assert gone(runner)
    assert list(w.work_dir.iterdir()) == []
    assert f"job {job_id}: killed on stop; the Node will requeue it" in output
    assert node.job(job_id)["state"] in ("running", "queued")
    assert node.events(job_id, "job.finish") == [] and node.events(job_id, "job.fail") == []


def test_a_worker_started_before_its_node_keeps_trying_until_it_answers(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pygrid.cli", "worker", "--node", url, "--poll-wait", "1"]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Unknown to the Node: once it answers, the Worker is refused and exits.
            env={**os.environ, "PYGRID_WORKER_TOKEN": "pgw_999_" + "x" * 40},
            start_new_session=True,
        )
    try:
        wait_for(
            "the Worker to say it cannot reach the Node", lambda: "cannot reach" in log.read_text()
        )
        assert process.poll() is None
        env = {"PYGRID_HOME": str(tmp_path / "home"), "PYGRID_OWNER_PASSWORD": PASSWORD}
        args = ["node", "--port", str(port), "--data-dir", str(tmp_path / "node")]
        with running(args, port, tmp_path / "node.log", env=env):
            code = wait_for("the Worker to exit", process.poll, timeout=90)
        output = log.read_text()
    finally:
        kill_tree(process, signal.SIGTERM)

    assert code == 2, output
    assert output.count("cannot reach the Node") == 1, output
    assert output.strip().splitlines()[-1].startswith("Error: the Node refused the worker token")
