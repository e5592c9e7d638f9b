"""The Worker queue under contention, with real processes: 8 ``pygrid worker`` processes take
200 queued statistics jobs from a real Node on PostgreSQL, and every job runs exactly once."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import free_port, running, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
WORKERS = 8
JOBS = 200
CSV = b"age,score\n" + b"".join(f"{20 + i % 50},{i * 0.5}\n".encode() for i in range(100))


def _session(url: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    answer = session.post(
        f"{url}/users/login",
        json={"email": OWNER["PYGRID_OWNER_EMAIL"], "password": OWNER["PYGRID_OWNER_PASSWORD"]},
        timeout=30,
    )
    answer.raise_for_status()
    session.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return session


def _start_worker(url: str, token: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pygrid.cli", "worker", "--node", url, "--concurrency", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYGRID_WORKER_TOKEN": token},
            start_new_session=True,
        )


def test_eight_workers_run_two_hundred_jobs_exactly_once(
    tmp_path: Path, postgres_server: Any
) -> None:
    database = postgres_server.create_database("queue_exactly_once")
    port = free_port()
    args = [
        "node",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--threads",
        "32",
        "--database-url",
        database,
    ]
    with running(args, port, tmp_path / "node.log", env=OWNER) as node:
        http = _session(node.url)
        upload = http.post(
            f"{node.url}/data-centric/datasets",
            data={"name": "scores", "tags": "bench"},
            files={"data": ("scores.csv", CSV)},
            timeout=30,
        )
        assert upload.status_code == 201, upload.text
        spec = {
            "dataset_id": upload.json()["id"],
            "kind": "statistics",
            "statistics": {"columns": [{"name": "score", "stats": ["count", "sum"]}]},
        }
        jobs = []
        for _ in range(JOBS):
            answer = http.post(
                f"{node.url}/data-centric/jobs",
                files={"spec": (None, json.dumps(spec))},
                timeout=30,
            )
            assert answer.status_code == 201, answer.text
            jobs.append(answer.json()["id"])
        token = http.post(
            f"{node.url}/data-centric/worker-tokens", json={"name": "fleet"}, timeout=30
        ).json()["token"]
        workers = [
            _start_worker(node.url, token, tmp_path / f"worker-{i}.log") for i in range(WORKERS)
        ]
        try:
            for job in jobs:  # approved while the Workers are already polling: they race for each
                assert (
                    http.post(
                        f"{node.url}/data-centric/jobs/{job}/approve", json={}, timeout=30
                    ).status_code
                    == 200
                )
            deadline = time.monotonic() + 900
            while True:
                states = collections.Counter(
                    j["state"]
                    for j in http.get(f"{node.url}/data-centric/jobs", timeout=30).json()["jobs"]
                )
                if states["finished"] == JOBS:
                    break
                assert not states["failed"], (
                    states,
                    [p.read_text()[-2000:] for p in tmp_path.glob("worker-*.log")],
                )
                assert time.monotonic() < deadline, states
                time.sleep(1)
        finally:
            for worker in workers:
                stop(worker)

        claims = http.get(
            f"{node.url}/data-centric/audit",
            params={"action": "job.claim", "limit": 10_000},
            timeout=30,
        ).json()["events"]
        per_job = collections.Counter(event["job_id"] for event in claims)
        assert sorted(per_job) == sorted(jobs) and set(per_job.values()) == {1}
        finishes = http.get(
            f"{node.url}/data-centric/audit",
            params={"action": "job.finish", "limit": 10_000},
            timeout=30,
        ).json()["events"]
        assert sorted(e["job_id"] for e in finishes) == sorted(jobs)
        assert {
            j["attempts"]
            for j in http.get(f"{node.url}/data-centric/jobs", timeout=30).json()["jobs"]
        } == {1}
        # the work was spread: more than one Worker process took jobs
        labels = {e["detail"]["worker"] for e in claims}
        assert len(labels) > 1, labels
