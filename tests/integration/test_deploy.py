"""``pygrid deploy`` as an operator runs it: dry runs on every cloud with no credentials, the
rendered files, and clear one-line refusals. The apply/destroy story against moto is in
tests/e2e/test_deploy_aws.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import run_cli
from tests.support.terraform import checkov, fmt_problems

pytestmark = pytest.mark.cloud
CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_SUBSCRIPTION_ID",
)


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh machine: no cloud credentials anywhere, a private PYGRID_HOME."""
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {
        "PYGRID_HOME": str(tmp_path / "home"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_CONFIG_FILE": str(empty),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "AZURE_CONFIG_DIR": str(tmp_path / "azure"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_dry_run_renders_a_clean_deployment_with_no_credentials(
    cloud: str, no_credentials: dict[str, str], tmp_path: Path
) -> None:
    # Execute
    result = run_cli(
        [
            "deploy",
            "--provider",
            cloud,
            "--app",
            "node",
            "--name",
            f"dry-{cloud}",
            "--dry-run",
            "--workers-min",
            "1",
            "--workers-max",
            "4",
        ],
        env=no_credentials,
    )
    folder = tmp_path / "home" / "deployments" / f"dry-{cloud}"
    # Assert
    assert result.returncode == 0, result.stderr
    assert "Nothing was created" in result.stdout
    assert {"main.tf", "app-startup.sh", "worker-startup.sh", "deployment.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert (folder / "modules" / cloud / "main.tf").exists()
    assert "loads cleanly" in result.stdout or "validate passed" in result.stdout
    assert fmt_problems(folder) == []
    scan = checkov(folder)
    assert scan["parsing_errors"] == 0 and scan["failed"] == [], scan["failed"]
    for script in ("app-startup.sh", "worker-startup.sh"):
        assert subprocess.run(["bash", "-n", str(folder / script)]).returncode == 0
    app_script = (folder / "app-startup.sh").read_text()
    lines = app_script.splitlines()
    assert f'"pygrid[{cloud}]==' in app_script and "torch==2.13.0" in app_script
    assert "Restart=on-failure" in lines
    (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.startswith("ExecStart=/opt/pygrid/start.sh node --host 0.0.0.0 --port 5000")
    fetch = app_script.split("cat > /opt/pygrid/database_url.py <<'PY'\n")[1].split("\nPY\n")[0]
    compile(fetch, "database_url.py", "exec")  # the secret-store snippet is valid Python
    check_cloud_wiring(cloud, folder)


BLOB_URLS = {
    "aws": "s3://__PYGRID_BUCKET__/blobs",
    "gcp": "gs://__PYGRID_BUCKET__/blobs",
    "azure": "az://__PYGRID_BUCKET__/blobs",
}


def heredoc(script: str, target: str) -> list[str]:
    """The lines a startup script writes into ``target`` (a ``cat > target <<'ENV'`` block)."""
    return script.split(f"cat > {target} <<'ENV'\n")[1].split("\nENV\n")[0].splitlines()


def replaced(module: str, local: str) -> set[str]:
    """The placeholders the module's ``local = replace(...)`` chain fills in."""
    chain = module.split(f"  {local} = replace(", 1)[1].split("\n  )\n", 1)[0]
    return set(re.findall(r'"(__PYGRID_[A-Z_]+__)"', chain))


def check_cloud_wiring(cloud: str, folder: Path) -> None:
    """Each VM learns its blob store and the Workers' token secret (never the token), and the
    module fills in every placeholder its script uses."""
    app_script = (folder / "app-startup.sh").read_text()
    worker_script = (folder / "worker-startup.sh").read_text()
    app_env, worker_env = (
        heredoc(app_script, "/etc/pygrid/app.env"),
        heredoc(worker_script, "/etc/pygrid/worker.env"),
    )
    assert f"PYGRID_BLOB_URL={BLOB_URLS[cloud]}" in app_env
    for env in (app_env, worker_env):
        assert f"PYGRID_CLOUD={cloud}" in env
        assert "PYGRID_WORKER_TOKEN_SECRET=__PYGRID_WORKER_TOKEN_SECRET__" in env
        # a user-assigned identity is named to the Azure SDKs by its client id
        assert ("AZURE_CLIENT_ID=__PYGRID_CLIENT_ID__" in env) == (cloud == "azure")
    assert not any("PYGRID_WORKER_TOKEN=" in line for line in app_script.splitlines())
    assert "PYGRID_WORKER_TOKEN=" not in worker_script
    module = (folder / "modules" / cloud / "main.tf").read_text()
    used = {
        "app_user_data": set(re.findall(r"__PYGRID_[A-Z_]+__", app_script)),
        "worker_user_data": set(re.findall(r"__PYGRID_[A-Z_]+__", worker_script)),
    }
    for local, placeholders in used.items():
        assert placeholders - replaced(module, local) == set(), f"{cloud}: {local}"


def test_dry_run_can_be_repeated_and_destroyed_cleanly(no_credentials: dict[str, str]) -> None:
    args = ["deploy", "--provider", "gcp", "--name", "again", "--dry-run"]
    assert run_cli(args, env=no_credentials).returncode == 0
    assert run_cli(args, env=no_credentials).returncode == 0
    status = run_cli(["status", "--format", "json"], env=no_credentials)
    assert [d["name"] for d in __import__("json").loads(status.stdout)["cloud"]] == ["again"]
    assert run_cli(["destroy", "again", "--yes"], env=no_credentials).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "aws", "--region", "mars-north-1"], "unknown AWS region"),
        (["--provider", "gcp", "--region", "Europe West"], "is not a gcp region"),
        (["--provider", "aws", "--name", "Bad_Name"], "name"),
        (["--provider", "aws", "--workers-min", "3", "--workers-max", "1"], "workers_min"),
        (["--provider", "aws", "--allowed-cidr", "10.0.0.300/8"], "allowed_cidrs"),
        (["--provider", "aws", "--state", "remote"], "state-bucket"),
        (["--provider", "aws", "--yes"], "AWS credentials"),
        (["--provider", "gcp", "--yes"], "GOOGLE_APPLICATION_CREDENTIALS"),
        (["--provider", "azure", "--yes"], "AZURE_SUBSCRIPTION_ID"),
    ],
)
def test_bad_deploys_fail_in_one_line_and_create_nothing(
    args: list[str], message: str, no_credentials: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli(["deploy", *args], env=no_credentials, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "home" / "deployments").exists() or not any(
        (tmp_path / "home" / "deployments").iterdir()
    )


def test_destroying_an_unknown_deployment_says_so(no_credentials: dict[str, str]) -> None:
    result = run_cli(["destroy", "nothing-here", "--yes"], env=no_credentials)
    assert result.returncode == 1 and "no deployment named 'nothing-here'" in result.stderr


def test_compose_renders_a_network_and_four_nodes() -> None:
    import yaml

    result = run_cli(["compose"])
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    assert sorted(services) == ["alice", "bob", "charlie", "dan", "network"]
    assert all(
        "--network http://network:7000" in " ".join(s["command"])
        for n, s in services.items()
        if n != "network"
    )
