"""Throughput of one Worker on ``statistics`` jobs: jobs per second end to end (approve ->
claim -> fetch -> sandboxed run -> report), against the floor of the sandbox itself.

Baseline, measured in the same run: starting the sandbox's interpreter with what a statistics
job imports (numpy, safetensors) as many times, back to back. The ratio says how much the
Node round trips and the Worker's bookkeeping add on top of one fresh process per job.

    .venv/bin/python bench/statistics_jobs.py [--jobs 60]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import OWNER_EMAIL, OWNER_PASSWORD, log, node  # noqa: E402

ROWS = 10_000


def _csv() -> bytes:
    lines = ["age,income"] + [f"{18 + i % 70},{1000 + (i * 37) % 90000}.5" for i in range(ROWS)]
    return ("\n".join(lines) + "\n").encode()


def _floor(jobs: int) -> float:
    """Seconds to start ``jobs`` bare sandbox interpreters importing numpy and safetensors."""
    started = time.perf_counter()
    for _ in range(jobs):
        subprocess.run(
            [sys.executable, "-c", "import numpy, safetensors.numpy"],
            check=True,
            env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"},
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()
    spec_columns = [{"name": "age", "stats": ["count", "sum", "mean", "histogram"], "bins": 10}]
    with node("--threads", "16") as grid:
        http = requests.Session()
        http.trust_env = False
        token = http.post(
            f"{grid.url}/users/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD}
        ).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        dataset = http.post(
            f"{grid.url}/data-centric/datasets",
            data={"name": "people", "tags": "bench"},
            files={"data": ("people.csv", _csv())},
        ).json()
        spec = {
            "dataset_id": dataset["id"],
            "kind": "statistics",
            "statistics": {"columns": spec_columns},
            "privacy": {"epsilon": 1.0},
        }
        jobs = [
            http.post(
                f"{grid.url}/data-centric/jobs", files={"spec": (None, json.dumps(spec))}
            ).json()["id"]
            for _ in range(args.jobs)
        ]
        worker_token = http.post(
            f"{grid.url}/data-centric/worker-tokens", json={"name": "bench"}
        ).json()["token"]
        log(f"{args.jobs} statistics jobs submitted on {ROWS} rows; starting one Worker")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pygrid.cli",
                "worker",
                "--node",
                grid.url,
                "--concurrency",
                "1",
            ],
            env={**os.environ, "PYGRID_WORKER_TOKEN": worker_token},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            # the clock starts once the Worker polls: its own start-up is not a per-job cost
            while not http.get(f"{grid.url}/data-centric/worker-tokens").json()["tokens"][0][
                "last_seen"
            ]:
                if worker.poll() is not None:
                    raise RuntimeError(f"the Worker exited with {worker.returncode}")
                time.sleep(0.05)
            log(f"approving {args.jobs} statistics jobs on {ROWS} rows for one Worker")
            started = time.perf_counter()
            for job in jobs:
                http.post(f"{grid.url}/data-centric/jobs/{job}/approve", json={}).raise_for_status()
            while True:
                listed = http.get(
                    f"{grid.url}/data-centric/jobs", params={"state": "finished"}
                ).json()
                if len(listed["jobs"]) == args.jobs:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"the Worker exited with {worker.returncode}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    log("measuring the sandbox floor")
    floor = _floor(args.jobs)
    print(
        json.dumps(
            {
                "bench": "statistics_jobs",
                "jobs": args.jobs,
                "rows": ROWS,
                "jobs_per_second": round(args.jobs / elapsed, 3),
                "seconds_per_job": round(elapsed / args.jobs, 4),
                "sandbox_floor_jobs_per_second": round(args.jobs / floor, 3),
                "ratio_to_floor": round(elapsed / floor, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
