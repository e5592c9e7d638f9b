"""``pygrid demo data-centric`` as a user runs it: a real Node, a real ``pygrid worker`` started
with a token from the SDK, then the demo, each in its own process."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pygrid.client import DataCentricClient
from tests.integration.test_data_centric_client import worker
from tests.support.servers import Server, free_port, run_cli, running

pytestmark = pytest.mark.slow

OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
ACCURACY = re.compile(r"^Test accuracy: (\d\.\d+) \(loss \d+\.\d+\) on 297 held-out digits", re.M)
BUDGET = re.compile(
    r"^Budget of (\S+) on dataset (\d+): epsilon ([\d.]+) left before, ([\d.]+) left after", re.M
)
STEP = re.compile(r"^(\d)/8 ", re.M)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "log", env=OWNER) as server:
        yield server


@pytest.fixture(scope="module")
def owner(node: Server) -> Iterator[DataCentricClient]:
    with DataCentricClient(node.url) as client:
        client.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
        yield client


@pytest.fixture(scope="module")
def with_worker(
    node: Server, owner: DataCentricClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    token = owner.create_worker_token("demo-worker")["token"]
    with worker(node.url, token, tmp_path_factory.mktemp("worker") / "log") as process:
        yield process


def demo(node: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        [
            "demo", "data-centric", "--node", node.url,
            "--email", OWNER["PYGRID_OWNER_EMAIL"], "--password", OWNER["PYGRID_OWNER_PASSWORD"],
            *extra,
        ],
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(
    node: Server, with_worker: subprocess.Popen[bytes]
) -> subprocess.CompletedProcess[str]:
    return demo(node)


def test_the_demo_tells_the_whole_story_and_prints_an_accuracy(
    first_run: subprocess.CompletedProcess[str],
) -> None:
    out = first_run.stdout
    assert first_run.returncode == 0, out + first_run.stderr
    assert "Traceback" not in first_run.stderr and "Warning" not in first_run.stderr
    assert [int(n) for n in STEP.findall(out)] == list(range(1, 9))
    accuracy = ACCURACY.search(out)
    assert accuracy, out
    assert 0.0 <= float(accuracy[1]) <= 1.0
    budget = BUDGET.search(out)
    assert budget, out
    assert float(budget[3]) == 10.0
    assert 6.9 < float(budget[4]) < 7.1  # epsilon 3 (the accountant's, a hair under) was charged


def test_the_node_recorded_the_released_job_and_its_charge(
    owner: DataCentricClient, first_run: subprocess.CompletedProcess[str]
) -> None:
    (dataset,) = [d for d in owner.datasets() if d["name"] == "digits"]
    (job,) = owner.jobs(state="released")
    events = [e["action"] for e in owner.audit(job=job)]

    assert first_run.returncode == 0, first_run.stdout + first_run.stderr
    assert job["dataset_id"] == dataset["id"]
    assert job["requester_email"].startswith("scientist-")
    assert job["budget"]["spent"] == pytest.approx(job["epsilon"])
    assert events[0] == "job.download"
    assert {"job.submit", "job.approve", "job.claim", "job.finish", "job.release"} <= set(events)


def test_a_second_run_reuses_the_dataset(
    owner: DataCentricClient, first_run: subprocess.CompletedProcess[str], node: Server
) -> None:
    again = demo(node, "--epsilon", "1", "--budget", "2")

    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"dataset \d+ 'digits' is already on the Node", again.stdout)
    assert len([d for d in owner.datasets() if d["name"] == "digits"]) == 1
    assert ACCURACY.search(again.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "0"], "Error: --epsilon must be a positive number, not 0"),
        (["--epsilon", "5", "--budget", "4"], "Error: --budget (4) must be at least --epsilon (5)"),
        (["--password", "wrong-password"], "refused the login of owner@example.org"),
    ],
)
def test_bad_options_are_one_line(node: Server, args: list[str], message: str) -> None:
    result = demo(node, *args)

    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_an_unreachable_node_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = run_cli(
        ["demo", "data-centric", "--node", url, "--email", "a@b.c", "--password", "pw"]
    )

    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot reach {url}: ConnectionError"
