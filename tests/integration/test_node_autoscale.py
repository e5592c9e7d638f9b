"""The Node resizes its cloud Worker group from its job queue: a real Node app, the real AWS
provider (boto3) against moto's server on 127.0.0.1, jobs queued over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pygrid.providers.aws import ENDPOINT_ENV
from tests.support.data_centric import submit, upload
from tests.support.moto import FAKE_AWS_ENV, moto_server
from tests.support.users import PASSWORD, bearer, login

REGION = "us-east-1"
GROUP = "pygrid-node-workers"
CSV = b"age\n30\n40\n50\n"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    import boto3

    with moto_server() as endpoint:
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION, **_keys())
        ec2.create_launch_template(
            LaunchTemplateName="pygrid-worker",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        autoscaling = boto3.client(
            "autoscaling", endpoint_url=endpoint, region_name=REGION, **_keys()
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateName": "pygrid-worker", "Version": "$Latest"},
            MinSize=0,
            MaxSize=3,
            DesiredCapacity=0,
            AvailabilityZones=[f"{REGION}a"],
        )
        yield endpoint


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _desired(endpoint: str) -> int:
    import boto3

    client = boto3.client("autoscaling", endpoint_url=endpoint, region_name=REGION, **_keys())
    group = client.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][
        0
    ]
    return int(group["DesiredCapacity"])


@pytest.fixture
def node(tmp_path: Path, moto: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from pygrid.apps.node import create_app

    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv(ENDPOINT_ENV, moto)
    app = create_app(
        {
            "data_dir": tmp_path / "data",
            "port": 5000,
            "owner_email": "owner@example.org",
            "owner_password": PASSWORD,
            "scheduler_interval": 0,
            "cloud": "aws",
            "worker_group": GROUP,
            "jobs_per_worker": 2,
            "autoscale_cooldown": 0,
        }
    )
    yield app
    app.extensions["pygrid.db"].engine.dispose()


def test_the_worker_group_follows_the_queue(node: Any, moto: str) -> None:
    client = node.test_client()
    token = login(client, "owner@example.org")
    dataset = upload(client, token, CSV, "ages.csv").get_json()
    maintenance = node.extensions["pygrid.maintenance"]
    spec = {
        "dataset_id": dataset["id"],
        "kind": "statistics",
        "statistics": {"columns": [{"name": "age", "stats": ["sum"]}]},
    }

    assert maintenance.run_once() is None  # empty queue, group already at 0
    jobs = [submit(client, token, spec).get_json()["id"] for _ in range(5)]
    assert maintenance.run_once() is None  # pending review is not queued
    for job in jobs:
        client.post(f"/data-centric/jobs/{job}/approve", json={}, headers=bearer(token))
    assert maintenance.run_once() == 3  # ceil(5 / 2) = 3, the group's maximum
    assert _desired(moto) == 3
    for job in jobs[:4]:
        client.post(f"/data-centric/jobs/{job}/cancel", headers=bearer(token))
    assert maintenance.run_once() == 1
    assert _desired(moto) == 1
