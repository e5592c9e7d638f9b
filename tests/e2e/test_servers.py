"""``pygrid node`` and ``pygrid network`` as a user runs them: real processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from pygrid.db.migrate import head_revision
from tests.support.servers import free_port, run_cli, running

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_node_starts_with_nothing_but_a_port_and_keeps_its_secrets_private(tmp_path: Path) -> None:
    port = free_port()
    env = {"PYGRID_HOME": str(tmp_path / "home")}
    with running(["node", "--port", str(port)], port, tmp_path / "log", env=env) as server:
        status = requests.get(f"{server.url}/status", timeout=5).json()
        data_dir = tmp_path / "home" / "node" / "default"
        credentials = json.loads((data_dir / "owner-credentials.json").read_text())
        login = requests.post(f"{server.url}/users/login", json=credentials, timeout=10)
    assert status["app"] == "node" and status["database"]["backend"] == "sqlite"
    assert login.status_code == 200
    for secret in ("secret_key", "owner-credentials.json"):
        assert stat.S_IMODE((data_dir / secret).stat().st_mode) == 0o600
    assert str(data_dir / "owner-credentials.json") in server.output()


def test_network_takes_pygrid_environment_variables(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "GRID_NETWORK_PORT": str(port),
        "PYGRID_DATA_DIR": str(tmp_path / "net"),
        "PYGRID_OWNER_EMAIL": "op@example.org",
        "PYGRID_OWNER_PASSWORD": "operator-password",
    }
    with running(["network"], port, tmp_path / "log", env=env) as server:
        status = requests.get(f"{server.url}/status", timeout=5).json()
        login = requests.post(
            f"{server.url}/users/login",
            timeout=10,
            json={"email": "op@example.org", "password": "operator-password"},
        )
    assert (status["app"], status["id"]) == ("network", "network")
    assert login.status_code == 200


@pytest.mark.parametrize("app", ["node", "network"])
def test_run_sh_wrappers_keep_pygrids_manual_start(tmp_path: Path, app: str) -> None:
    port = free_port()
    env = {"PYGRID_HOME": str(tmp_path), "PYTHON": sys.executable}
    command = ["./run.sh", "--id", "bob", "--port", str(port), "--start_local_db"]
    with running(
        [], port, tmp_path / "log", env=env, cwd=REPO / "apps" / app, command=command
    ) as server:
        status = requests.get(f"{server.url}/status", timeout=5).json()
    assert (status["app"], status["id"]) == (app, "bob")
    assert (tmp_path / app / "bob" / f"{app}.db").exists()


def _replicas(master: psutil.Process) -> list[psutil.Process]:
    """Live worker processes of a gunicorn master (a killed one may vanish while we look)."""
    alive = []
    for child in master.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_replicas_share_state_and_survive_losing_one(tmp_path: Path) -> None:
    # Prepare: two replicas, spelled the way PyGrid documents it
    port = free_port()
    env = {"PYGRID_OWNER_EMAIL": "o@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}
    args = ["node", "--port", str(port), "--num_replicas", "2", "--data-dir", str(tmp_path / "d")]
    with running(args, port, tmp_path / "log", env=env) as server:
        gunicorn = psutil.Process(server.process.pid)
        workers = _replicas(gunicorn)
        assert len(workers) == 2
        token = requests.post(
            f"{server.url}/users/login",
            timeout=10,
            json={"email": "o@example.org", "password": "owner-password-1"},
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = requests.post(
            f"{server.url}/users",
            headers=headers,
            timeout=10,
            json={
                "email": "ds@example.org",
                "password": "ds-password-123",
                "role": "data_scientist",
            },
        )
        # Execute: kill one replica outright, then keep using the Node
        workers[0].send_signal(signal.SIGKILL)
        answers = [
            requests.get(f"{server.url}/users", headers=headers, timeout=10) for _ in range(20)
        ]
        for _ in range(100):
            replaced = {p.pid for p in _replicas(gunicorn)} - {workers[0].pid}
            if len(replaced) == 2:
                break
            time.sleep(0.1)
        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    # Assert
    assert created.status_code == 201
    assert all(a.status_code == 200 and len(a.json()["users"]) == 2 for a in answers)
    assert len(replaced) == 2, "gunicorn did not replace the killed replica"
    assert 'endpoint="users.list_users",method="GET",status="200"' in metrics


@pytest.fixture
def busy_port() -> Any:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use_names_the_port_and_the_process(tmp_path: Path, busy_port: int) -> None:
    result = run_cli(["node", "--port", str(busy_port), "--data-dir", str(tmp_path / "d")])
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert f"port {busy_port} is in use by pid {os.getpid()}" in message
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (["--data-dir", "{file}/sub"], {}, "is not writable"),
        ([], {"DATABASE_URL": "postgresql://u:pw@127.0.0.1:{closed}/db"}, "is unreachable"),
        ([], {"DATABASE_URL": "::not a url::"}, "DATABASE_URL is malformed"),
        ([], {"DATABASE_URL": "mysql://u@h/db"}, "PyGrid supports"),
        ([], {"SECRET_KEY": "short"}, "SECRET_KEY is too short"),
        (["--num-replicas", "0"], {}, "num_replicas"),
        (["--network", "not-a-url"], {}, "network_url"),
    ],
)
def test_bad_start_options_fail_in_one_line(
    tmp_path: Path, extra: list[str], env: dict[str, str], expected: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    fill = {"file": str(a_file), "closed": str(free_port())}
    args = ["node", "--port", str(free_port()), *[e.format(**fill) for e in extra]]
    if "--data-dir" not in args:
        args += ["--data-dir", str(tmp_path / "d")]
    result = run_cli(args, env={k: v.format(**fill) for k, v in env.items()})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], (
        result.stderr
    )
    assert "pw@" not in result.stderr


@pytest.mark.postgres
def test_node_on_postgresql(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.create_database("e2e_node")
    upgraded = run_cli(["db", "upgrade", "--database-url", url])
    port = free_port()
    env = {"DATABASE_URL": url, "PYGRID_OWNER_PASSWORD": "owner-password-1"}
    args = [
        "node",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "d"),
        "--owner-email",
        "o@example.org",
    ]
    with running(args, port, tmp_path / "log", env=env) as server:
        status = requests.get(f"{server.url}/status", timeout=5).json()
        login = requests.post(
            f"{server.url}/users/login",
            timeout=10,
            json={"email": "o@example.org", "password": "owner-password-1"},
        )
    assert upgraded.returncode == 0 and f"revision {head_revision()}" in upgraded.stdout
    assert status["database"]["backend"] == "postgresql"
    assert login.status_code == 200
    assert not (tmp_path / "d" / "node.db").exists()


@pytest.mark.cloud
def test_node_keeps_blobs_in_s3_when_told(tmp_path: Path) -> None:
    import boto3

    from tests.support.moto import moto_server

    with moto_server() as endpoint:
        creds = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="grid-blobs")
        port = free_port()
        env = {
            **creds,
            "PYGRID_S3_ENDPOINT_URL": endpoint,
            "PYGRID_BLOB_URL": "s3://grid-blobs/alice",
        }
        args = ["node", "--port", str(port), "--data-dir", str(tmp_path / "d")]
        with running(args, port, tmp_path / "log", env=env) as server:
            status = requests.get(f"{server.url}/status", timeout=5).json()
        missing = run_cli(args, env={**env, "PYGRID_BLOB_URL": "s3://no-such-bucket"})
    assert status["blob_store"] == {"reachable": True, "backend": "S3BlobStore", "error": None}
    assert not (tmp_path / "d" / "blobs").exists()
    assert (
        missing.returncode == 1 and "blob store s3://no-such-bucket is not usable" in missing.stderr
    )


def test_settings_without_options_come_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {"PYGRID_MAX_CONTENT_LENGTH": "2048", "DATABASE_URL": "postgresql://u@127.0.0.1:1/nope"}
    args = ["node", "--port", str(port), "--data-dir", str(tmp_path / "d"), "--start_local_db"]
    with running(args, port, tmp_path / "log", env=env) as server:
        big = requests.post(
            f"{server.url}/users/login",
            data="x" * 5000,
            timeout=5,
            headers={"Content-Type": "application/json"},
        )
        status = requests.get(f"{server.url}/status", timeout=5).json()
    assert big.status_code == 413
    assert status["database"]["backend"] == "sqlite"  # --start_local_db wins over DATABASE_URL
