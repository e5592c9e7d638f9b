"""The data-centric admin commands (``pygrid dataset|requests|budget|worker-token|audit``) as an
Owner runs them against a real ``pygrid node``; every failure is one line and exit status 1."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pygrid import serde
from pygrid.client import DataCentricClient
from pygrid.workloads import digits
from tests.support.servers import Server, free_port, run_cli, running

OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
SCIENTIST = ("analyst@example.org", "analyst-password-1")
PEOPLE_CSV = "age,city,score\n31,Paris,1.5\n45,Rome,2.5\n27,Paris,3.0\n52,Oslo,0.5\n"
UPLOADED = re.compile(r"^Uploaded dataset (\d+) 'people': 4 rows, columns age int64, city int64")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    args = ["node", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "log", env=OWNER) as server:
        yield server


def as_owner(node: Server) -> dict[str, str]:
    return {
        "PYGRID_NODE": node.url,
        "PYGRID_EMAIL": OWNER["PYGRID_OWNER_EMAIL"],
        "PYGRID_PASSWORD": OWNER["PYGRID_OWNER_PASSWORD"],
    }


def pygrid(node: Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``pygrid ARGS`` as the Node's Owner (``env`` overrides)."""
    return run_cli(list(args), env={**as_owner(node), **env})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line a failing command printed on stderr."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0].removeprefix("Error: ")


@pytest.fixture(scope="module")
def people_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "people.csv"
    path.write_text(PEOPLE_CSV)
    return path


@pytest.fixture(scope="module")
def people(node: Server, people_csv: Path) -> int:
    """The id of the dataset ``pygrid dataset upload`` created."""
    out = ok(
        pygrid(
            node, "dataset", "upload", str(people_csv), "--name", "people",
            "--tags", "census,people", "--description", "Four people", "--target", "score",
        )
    )  # fmt: skip
    match = UPLOADED.match(out)
    assert match, out
    return int(match[1])


@pytest.fixture(scope="module")
def scientist(node: Server, people: int) -> Iterator[DataCentricClient]:
    """A data scientist (made with the SDK) with jobs to review."""
    with DataCentricClient(node.url) as owner:
        owner.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
        owner.http.json(
            "POST",
            "/users",
            json={"email": SCIENTIST[0], "password": SCIENTIST[1], "role": "data_scientist"},
        )
    with DataCentricClient(node.url) as client:
        client.login(*SCIENTIST)
        yield client


def statistics_job(scientist: DataCentricClient, dataset: int) -> int:
    stats = {"columns": [{"name": "age", "stats": ["count", "mean"]}]}
    return int(scientist.submit_job(dataset, "statistics", statistics=stats)["id"])


def test_upload_then_list_and_show(node: Server, people: int) -> None:
    listed = as_json(pygrid(node, "dataset", "list", "--format", "json"))
    table = ok(pygrid(node, "dataset", "list"))
    shown = as_json(pygrid(node, "dataset", "show", str(people), "--format", "json"))
    details = ok(pygrid(node, "dataset", "show", str(people)))

    assert [d["name"] for d in listed if d["id"] == people] == ["people"]
    assert "people" in table and "census, people" in table and "age int64" in table
    assert shown["description"] == "Four people"
    assert shown["schema"]["target"] == "score"
    assert "description: Four people" in details
    assert re.search(r"city +│ int64 +│ \[\] +│ 0 +│ 2 +│ Oslo, Paris, Rome", details), details


def test_update_changes_tags_and_the_auto_release_rule(node: Server, people: int) -> None:
    out = ok(
        pygrid(
            node, "dataset", "update", str(people), "--tags", "census,people,demo",
            "--auto-release-epsilon", "0.5",
        )
    )  # fmt: skip
    updated = as_json(pygrid(node, "dataset", "show", str(people), "--format", "json"))
    ok(pygrid(node, "dataset", "update", str(people), "--no-auto-release"))
    cleared = as_json(pygrid(node, "dataset", "show", str(people), "--format", "json"))

    assert out.startswith(f"Updated dataset {people} 'people': auto_release_epsilon, tags")
    assert updated["tags"] == ["census", "people", "demo"]
    assert updated["auto_release_epsilon"] == 0.5
    assert cleared["auto_release_epsilon"] is None


def test_mock_downloads_safetensors_or_csv(node: Server, people: int, tmp_path: Path) -> None:
    out = ok(pygrid(node, "dataset", "mock", str(people), "-o", str(tmp_path / "mock.st")))
    ok(pygrid(node, "dataset", "mock", str(people), "-o", str(tmp_path / "mock.csv"), "--csv"))

    data = (tmp_path / "mock.st").read_bytes()
    tensors = serde.load(data, max_bytes=len(data))
    assert set(tensors) == {"age", "city", "score"}
    assert (tmp_path / "mock.csv").read_text().splitlines()[0] == "age,city,score"
    assert out.startswith(f"Wrote the mock of dataset {people} to {tmp_path / 'mock.st'}")


def test_delete_asks_first_and_deletes_with_yes(node: Server, people_csv: Path) -> None:
    out = ok(pygrid(node, "dataset", "upload", str(people_csv), "--name", "doomed"))
    doomed = out.split()[2]

    unconfirmed = pygrid(node, "dataset", "delete", doomed)  # stdin is empty: no answer
    still_there = ok(pygrid(node, "dataset", "show", doomed))
    deleted = ok(pygrid(node, "dataset", "delete", doomed, "--yes"))
    gone = pygrid(node, "dataset", "show", doomed)

    assert one_error_line(unconfirmed) == (
        f"dataset {doomed} was not deleted (pass --yes to skip the question)"
    )
    assert "doomed" in still_there
    assert deleted.strip() == f"Deleted dataset {doomed} 'doomed'"
    assert one_error_line(gone) == f"no dataset with id {doomed}"


def test_requests_list_shows_who_what_and_the_cost(
    node: Server, people: int, scientist: DataCentricClient
) -> None:
    job = scientist.submit_job(
        digits_dataset(node, scientist),
        "train",
        model=digits.mlp(),
        privacy={"epsilon": 2.0, "delta": 1e-5},
    )

    table = ok(pygrid(node, "requests", "list"))
    listed = as_json(pygrid(node, "requests", "list", "--format", "json"))
    row = next(line for line in table.splitlines() if line.startswith(f"│ {job['id']} "))

    assert [j["id"] for j in listed if j["state"] != "pending_review"] == []
    assert job["id"] in [j["id"] for j in listed]
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[:6] == [
        str(job["id"]),
        SCIENTIST[0],
        f"digits ({job['dataset_id']})",
        "train",
        "pending_review",
        str(len(job["ops"])),
    ]
    assert float(cells[6]) == pytest.approx(job["epsilon"], rel=1e-3)
    assert cells[7] == "0"  # no budget yet: a limit of 0


def digits_dataset(node: Server, scientist: DataCentricClient) -> int:
    """The digits dataset, uploaded once through the SDK as the Owner."""
    found = scientist.search(tags="digits")
    if found:
        return int(found[0]["id"])
    import io

    import numpy as np

    data = digits.load()
    buffer = io.BytesIO()
    np.savez(buffer, x=data.x_train.numpy()[:200], y=data.y_train.numpy()[:200])
    with DataCentricClient(node.url) as owner:
        owner.login(OWNER["PYGRID_OWNER_EMAIL"], OWNER["PYGRID_OWNER_PASSWORD"])
        created = owner.upload_dataset(buffer.getvalue(), name="digits", tags="digits", target="y")
    return int(created["id"])


def test_approve_and_deny_then_a_second_review_is_one_line(
    node: Server, people: int, scientist: DataCentricClient
) -> None:
    first, second = statistics_job(scientist, people), statistics_job(scientist, people)

    approved = ok(pygrid(node, "requests", "approve", str(first), "--reason", "aggregate only"))
    denied = ok(pygrid(node, "requests", "deny", str(second), "--reason", "too fine-grained"))
    again = pygrid(node, "requests", "deny", str(first), "--reason", "changed my mind")
    release = pygrid(node, "requests", "release", str(first))
    queued = as_json(pygrid(node, "requests", "list", "--state", "queued", "--format", "json"))

    about = f"statistics on people by {SCIENTIST[0]}"
    assert approved.strip() == f"Approved job {first} ({about}): now queued"
    assert denied.strip() == f"Denied job {second} ({about}): too fine-grained"
    assert one_error_line(again) == f"job {first} is queued, not pending_review"
    assert "queued" in one_error_line(release)
    assert first in [j["id"] for j in queued]
    assert scientist.job(second)["review_reason"] == "too fine-grained"


def test_deny_needs_a_reason(node: Server, people: int, scientist: DataCentricClient) -> None:
    job = statistics_job(scientist, people)

    result = pygrid(node, "requests", "deny", str(job), "--reason", " ")

    assert one_error_line(result) == "--reason must say why the job is denied"
    assert scientist.job(job)["state"] == "pending_review"


def test_budget_set_and_list(node: Server, people: int, scientist: DataCentricClient) -> None:
    out = ok(
        pygrid(
            node,
            "budget",
            "set",
            "--dataset",
            str(people),
            "--user",
            SCIENTIST[0],
            "--epsilon",
            "3",
        )
    )
    listed = as_json(pygrid(node, "budget", "list", "--dataset", str(people), "--format", "json"))
    table = ok(pygrid(node, "budget", "list"))
    mine = ok(
        pygrid(node, "budget", "list", PYGRID_EMAIL=SCIENTIST[0], PYGRID_PASSWORD=SCIENTIST[1])
    )

    assert out.strip() == (f"Budget of {SCIENTIST[0]} on dataset {people}: ε 3, 0 spent, 3 left")
    assert [(b["user_email"], b["epsilon_limit"]) for b in listed] == [(SCIENTIST[0], 3.0)]
    assert SCIENTIST[0] in table
    assert SCIENTIST[0] in mine


def test_worker_token_create_list_revoke(node: Server) -> None:
    created = ok(pygrid(node, "worker-token", "create", "--name", "box-1", "--expires-days", "30"))
    header = re.search(r"^Worker token (\d+) 'box-1' \(expires: \S+\):$", created, re.M)
    shown = re.search(r"^(pgw_\d+_\S+)$", created, re.M)
    assert header and shown, created
    token_id, token = int(header[1]), shown[1]
    listed = as_json(pygrid(node, "worker-token", "list", "--format", "json"))
    revoked = ok(pygrid(node, "worker-token", "revoke", str(token_id)))
    after = as_json(pygrid(node, "worker-token", "list", "--format", "json"))

    assert token.startswith(f"pgw_{token_id}_")
    assert f"  pygrid worker --node {node.url} --token {token}" in created.splitlines()
    entry = next(t for t in listed if t["id"] == token_id)
    assert entry["name"] == "box-1" and entry["revoked_at"] is None and "token" not in entry
    assert token not in json.dumps(listed)
    assert revoked.strip() == f"Revoked worker token {token_id}"
    assert next(t for t in after if t["id"] == token_id)["revoked_at"] is not None


def test_audit_filters_by_job_and_action(
    node: Server, people: int, scientist: DataCentricClient
) -> None:
    job = statistics_job(scientist, people)
    ok(pygrid(node, "requests", "approve", str(job)))

    for_job = as_json(pygrid(node, "audit", "--job", str(job), "--format", "json"))
    uploads = as_json(
        pygrid(node, "audit", "--action", "dataset.upload", "--limit", "1", "--format", "json")
    )
    table = ok(pygrid(node, "audit", "--dataset", str(people)))
    forbidden = pygrid(node, "audit", PYGRID_EMAIL=SCIENTIST[0], PYGRID_PASSWORD=SCIENTIST[1])

    assert [e["action"] for e in for_job] == ["job.approve", "job.submit"]
    assert len(uploads) == 1 and uploads[0]["action"] == "dataset.upload"
    assert "dataset.upload" in table and "job.submit" in table
    assert "read_audit_log" in one_error_line(forbidden)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dataset", "upload", "missing.csv", "--name", "x"], "no such file: missing.csv"),
        (
            ["budget", "set", "--dataset", "1", "--user", "a@b.c", "--epsilon", "-1"],
            "--epsilon must be a non-negative number, not -1",
        ),
        (
            ["dataset", "update", "1", "--auto-release-epsilon", "0"],
            "--auto-release-epsilon must be a positive number, not 0",
        ),
        (["dataset", "update", "1"], "nothing to change: pass --name, --description, --tags"),
        (["dataset", "show", "9999"], "no dataset with id 9999"),
        (["requests", "approve", "9999"], "no job with id 9999"),
    ],
)
def test_bad_input_is_one_line(node: Server, args: list[str], expected: str) -> None:
    assert one_error_line(pygrid(node, *args)).startswith(expected)


def test_a_wrong_password_is_one_line(node: Server) -> None:
    result = pygrid(node, "dataset", "list", PYGRID_PASSWORD="not-the-password")

    assert one_error_line(result) == (
        f"{node.url} refused the login of {OWNER['PYGRID_OWNER_EMAIL']}: wrong email or password"
    )


def test_a_data_scientist_sees_only_their_jobs_and_cannot_approve(
    node: Server, people: int, scientist: DataCentricClient
) -> None:
    job = statistics_job(scientist, people)
    env = {"PYGRID_EMAIL": SCIENTIST[0], "PYGRID_PASSWORD": SCIENTIST[1]}

    mine = as_json(pygrid(node, "requests", "list", "--state", "all", "--format", "json", **env))
    approve = pygrid(node, "requests", "approve", str(job), **env)

    assert {j["requester_email"] for j in mine} == {SCIENTIST[0]}
    assert "triage_requests" in one_error_line(approve)
    assert scientist.job(job)["state"] == "pending_review"


def test_an_unreachable_node_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = run_cli(
        ["dataset", "list"],
        env={"PYGRID_NODE": url, "PYGRID_EMAIL": "a@b.c", "PYGRID_PASSWORD": "pw"},
    )

    assert one_error_line(result) == f"cannot reach {url}: ConnectionError"


def test_a_node_without_credentials_says_how_to_pass_them() -> None:
    result = run_cli(["audit", "--node", "http://127.0.0.1:1"], env={"PYGRID_EMAIL": ""})

    assert "--email" in one_error_line(result) and "PYGRID_PASSWORD" in result.stderr


def test_without_a_node_or_local_grid_it_says_so(tmp_path: Path) -> None:
    result = run_cli(["requests", "list"], env={"PYGRID_HOME": str(tmp_path), "PYGRID_NODE": ""})

    assert one_error_line(result) == (
        "no local grid is running: start one with `pygrid up` or pass --node URL"
    )
