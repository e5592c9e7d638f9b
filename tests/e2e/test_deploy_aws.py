"""The operator's story on AWS, against moto's server on 127.0.0.1 with the real terraform binary
and the offline AWS provider: a deploy that fails half way, resumed; status showing the VM and
the Worker group; the Node's autoscaler resizing the group; destroy. Skipped where this machine
has no terraform binary or no offline AWS provider mirror."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto import moto_server
from tests.support.servers import free_port, run_cli
from tests.support.terraform import cli_config, terraform_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cloud,
    pytest.mark.skipif(
        terraform_binary() is None,
        reason="no terraform binary with the offline AWS provider mirror",
    ),
]
REGION = "eu-west-2"


def boto(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def an_image(endpoint: str) -> str:
    images = boto("ec2", endpoint).describe_images(Owners=["amazon"])["Images"]
    return sorted(
        i["ImageId"]
        for i in images
        if i.get("Architecture") == "x86_64" and i.get("RootDeviceName")
    )[0]


def status(env: dict[str, str]) -> list[dict[str, Any]]:
    result = run_cli(["status", "--format", "json"], env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    cloud: list[dict[str, Any]] = json.loads(result.stdout)["cloud"]
    return cloud


def test_deploy_fails_resumes_reports_autoscales_and_destroys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pygrid.providers import get_provider
    from pygrid.providers.autoscale import Autoscaler

    base = {
        "PYGRID_HOME": str(tmp_path / "home"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "TF_CLI_CONFIG_FILE": str(cli_config(tmp_path)),
        "CHECKPOINT_DISABLE": "1",
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, base[key])  # the autoscaler below runs in this process
    with moto_server() as endpoint:
        deploy = [
            "deploy",
            "--provider",
            "aws",
            "--app",
            "node",
            "--name",
            "alice",
            "--region",
            REGION,
            "--workers-min",
            "1",
            "--workers-max",
            "3",
            "--image-id",
            an_image(endpoint),
            "--yes",
            "--no-wait",
        ]
        # Prepare: the cloud is unreachable half way (the provider installs, the API is down)
        down = {**base, "PYGRID_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
        failed = run_cli(deploy, env=down, timeout=600)
        env = {**base, "PYGRID_AWS_ENDPOINT_URL": endpoint}
        after_failure = status(env)
        in_use = run_cli(deploy, env=env, timeout=120)
        # Execute: resume against the reachable cloud
        resumed = run_cli([*deploy, "--resume"], env=env, timeout=600)
        deployed = status(env)
        group = deployed[0]["outputs"]["worker_group"]
        provider = get_provider("aws", region=REGION, endpoint_url=endpoint)
        new_size = Autoscaler(
            provider, group, minimum=1, maximum=3, jobs_per_worker=2, cooldown_seconds=0
        ).step(5)
        scaled = status(env)
        destroyed = run_cli(["destroy", "alice", "--yes"], env=env, timeout=600)
        groups_left = boto("autoscaling", endpoint).describe_auto_scaling_groups()[
            "AutoScalingGroups"
        ]
        after_destroy = status(env)
    # Assert
    assert (
        failed.returncode == 1
        and "--resume" in failed.stderr
        and "pygrid destroy alice" in failed.stderr
    )
    assert after_failure[0]["status"] == "failed"
    assert in_use.returncode == 1 and "is in use by a failed aws deployment" in in_use.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "is deployed on aws: http://" in resumed.stdout
    entry = deployed[0]
    assert entry["status"] == "applied" and entry["instance_state"] == "running"
    assert entry["health"] == "not checked (endpoint override)"
    assert entry["workers"]["desired"] == 1 and [
        i["state"] for i in entry["workers"]["instances"]
    ] == ["running"]
    assert new_size == 3
    assert scaled[0]["workers"]["desired"] == 3
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    assert groups_left == [] and after_destroy == []
    record = json.loads(
        (tmp_path / "home" / "deployments" / "alice" / "deployment.json").read_text()
    )
    assert record["status"] == "destroyed"
