"""infra/aws: the Terraform module `pygrid deploy --provider aws` calls.

Offline it must load, be fmt-clean, keep the shared input/output names (infra/README.md) and pass
checkov with only the skips listed here. With a terraform binary and the offline AWS provider
mirror, root modules calling it validate, and one really applies to and destroys from moto.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.terraform import (
    INFRA,
    CheckovReport,
    checkov_report,
    cli_config,
    fmt_problems,
    load_diagnostics,
    terraform,
    terraform_binary,
)

pytestmark = pytest.mark.cloud

MODULE = INFRA / "aws"
REGION = "us-east-1"
FAKE_KEY = "testing"

# Checks skipped inline in infra/aws (#checkov:skip=ID:reason). A new skip must be added here.
SKIPPED_CHECKS = {
    "CKV2_AWS_11",  # VPC flow logs: cost and a log sink; enable account-wide
    "CKV_AWS_18",  # S3 access logs: a second bucket per deployment
    "CKV_AWS_144",  # S3 cross-region replication: one region per deployment
    "CKV2_AWS_62",  # S3 event notifications: nothing consumes them
    "CKV_AWS_88",  # public IP: the app serves app_url; Workers reach PyPI without a NAT gateway
    "CKV_AWS_126",  # EC2 detailed monitoring: the Node scales on its queue depth
    "CKV_AWS_157",  # RDS Multi-AZ: doubles the cost of a small Node
    "CKV_AWS_118",  # RDS enhanced monitoring: extra role and cost
    "CKV_AWS_353",  # RDS Performance Insights: opt-in cost
    "CKV_AWS_354",  # ...so no Performance Insights key either
    "CKV_AWS_293",  # RDS deletion protection: pygrid destroy deletes (final snapshot kept)
    "CKV2_AWS_57",  # worker token rotation: the Node mints a new one when it is revoked
}

# Every placeholder the module fills in the app's startup script (infra/aws/main.tf locals).
APP_PLACEHOLDERS = {
    "version": "__PYGRID_VERSION__",
    "region": "__PYGRID_REGION__",
    "bucket": "__PYGRID_BUCKET__",
    "worker_group": "__PYGRID_WORKER_GROUP__",
    "worker_token_secret": "__PYGRID_WORKER_TOKEN_SECRET__",
    "client_id": "__PYGRID_CLIENT_ID__",
    "database_host": "__PYGRID_DATABASE_HOST__",
    "database_port": "__PYGRID_DATABASE_PORT__",
    "database_name": "__PYGRID_DATABASE_NAME__",
    "database_secret": "__PYGRID_DATABASE_SECRET__",
}
APP_USER_DATA = "".join(f"{key}={value}\n" for key, value in APP_PLACEHOLDERS.items())
WORKER_USER_DATA = (
    "#!/bin/sh\necho node=__PYGRID_NODE_URL__ version=__PYGRID_VERSION__"
    " region=__PYGRID_REGION__ token=__PYGRID_WORKER_TOKEN_SECRET__ client=__PYGRID_CLIENT_ID__\n"
)


def readme_names(section: str) -> set[str]:
    """The backticked names in the first column of a table of infra/README.md."""
    text = (INFRA / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in body.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            names.update(re.findall(r"`([a-z_]+)`", cells[1]))
    return names


def declared(kind: str, file_name: str) -> set[str]:
    """Names of the ``variable`` or ``output`` blocks in one file of the module."""
    return set(re.findall(rf'^{kind} "([a-z_]+)"', (MODULE / file_name).read_text(), re.M))


# --- offline ------------------------------------------------------------------------------------


def test_module_loads_with_no_diagnostics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli_config(tmp_path)))
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")

    assert load_diagnostics(MODULE) == []


def test_module_is_fmt_clean() -> None:
    assert fmt_problems(MODULE) == []


def test_module_has_the_shared_shape_and_contract() -> None:
    files = {path.name for path in MODULE.iterdir() if path.suffix == ".tf"}

    assert files == {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
    assert declared("variable", "variables.tf") == readme_names("Inputs")
    assert declared("output", "outputs.tf") == readme_names("Outputs")
    assert not re.search(r'^provider "', (MODULE / "main.tf").read_text(), re.M)


@pytest.fixture(scope="module")
def checkov_found() -> CheckovReport:
    """One checkov scan for the module's checkov tests (~4 s)."""
    return checkov_report(MODULE)


def test_checkov_finds_no_failed_check_and_no_parsing_error(checkov_found: CheckovReport) -> None:
    assert checkov_found.parsing_errors == []
    assert checkov_found.failed == []
    assert checkov_found.passed > 50, "checkov scanned nothing: wrong directory or framework?"


def test_checkov_skips_only_the_documented_checks_each_with_a_reason(
    checkov_found: CheckovReport,
) -> None:
    assert set(checkov_found.skipped) == SKIPPED_CHECKS
    unexplained = {
        check: reasons
        for check, reasons in checkov_found.skipped.items()
        if any(len(reason) < 20 for reason in reasons)
    }
    assert unexplained == {}


# --- with the terraform binary and the offline AWS provider mirror -------------------------------

needs_terraform = pytest.mark.skipif(
    terraform_binary() is None,
    reason="no terraform on PATH or no hashicorp/aws in the offline mirror (/opt/tf-plugins)",
)


def provider_block(endpoint: str | None) -> dict[str, Any]:
    """The aws provider of a root module: fake keys, and every API at ``endpoint`` (moto)."""
    provider: dict[str, Any] = {
        "region": REGION,
        "access_key": FAKE_KEY,
        "secret_key": FAKE_KEY,
        "skip_credentials_validation": True,
        "skip_requesting_account_id": True,
        "skip_metadata_api_check": True,
        "s3_use_path_style": True,
    }
    if endpoint:
        services = ("autoscaling", "ec2", "iam", "kms", "rds", "s3", "secretsmanager", "sts")
        provider["endpoints"] = [dict.fromkeys(services, endpoint)]
    return provider


def module_call(**inputs: Any) -> dict[str, Any]:
    """A ``module`` block calling infra/aws with the inputs the CLI would pass."""
    return {
        "source": str(MODULE),
        "region": REGION,
        "pygrid_version": "0.1.0",
        "app_user_data": APP_USER_DATA,
        "worker_user_data": WORKER_USER_DATA,
        **inputs,
    }


def write_root(directory: Path, endpoint: str | None, modules: dict[str, dict[str, Any]]) -> Path:
    """A root module (``main.tf.json``) in ``directory``; the first module's outputs re-exported."""
    directory.mkdir(parents=True, exist_ok=True)
    first = next(iter(modules))
    outputs = sorted(declared("output", "outputs.tf"))
    root = {
        "terraform": {"required_providers": {"aws": {"source": "hashicorp/aws"}}},
        "provider": {"aws": provider_block(endpoint)},
        "module": modules,
        "output": {name: {"value": f"${{module.{first}.{name}}}"} for name in outputs},
    }
    (directory / "main.tf.json").write_text(json.dumps(root, indent=2))
    return directory


def run(args: list[str], cwd: Path, rc: Path, timeout: float = 300) -> str:
    """Run terraform and return its stdout; fail with its output when it fails."""
    result = terraform([*args, "-no-color"], cwd=cwd, rc=rc, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"terraform {' '.join(args)} failed:\n{result.stdout[-4000:]}{result.stderr}")
    return result.stdout


@needs_terraform
def test_root_modules_calling_it_validate(tmp_path: Path) -> None:
    rc = cli_config(tmp_path)
    root = write_root(
        tmp_path / "root",
        endpoint=None,
        modules={
            "node": module_call(app="node", name="alice", workers_min=1, workers_max=2),
            "node_managed": module_call(
                app="node",
                name="bob",
                database="managed",
                workers_max=3,
                allowed_cidrs=["192.0.2.0/24"],
                ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 test",
            ),
            "network_managed": module_call(app="network", name="net", database="managed"),
        },
    )

    run(["init", "-backend=false", "-input=false"], root, rc)
    run(["validate"], root, rc)


# Bad inputs the module's validation rules refuse, with the message each one gives.
BAD_INPUTS = {
    "bad_app": ({"app": "worker"}, 'app must be "node" or "network"'),
    "bad_name": ({"name": "Alice"}, "name must match"),
    "bad_database": ({"database": "mysql"}, 'database must be "embedded" or "managed"'),
    "ssh_from_anywhere": ({"allowed_cidrs": ["0.0.0.0/0"]}, "SSH is never open to the internet"),
    "app_port_is_ssh": ({"app_port": 22}, "app_port must be a TCP port other than 22"),
}


@needs_terraform
def test_validate_refuses_bad_inputs(tmp_path: Path) -> None:
    rc = cli_config(tmp_path)
    modules = {
        key: module_call(app="node", name="alice") | inputs
        for key, (inputs, _message) in BAD_INPUTS.items()
    }
    root = write_root(tmp_path / "root", endpoint=None, modules=modules)
    run(["init", "-backend=false", "-input=false"], root, rc)

    result = terraform(["validate", "-no-color"], cwd=root, rc=rc)

    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())
    assert [key for key, (_inputs, message) in BAD_INPUTS.items() if message not in said] == []


# --- apply and destroy against moto --------------------------------------------------------------


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    """A moto server process on 127.0.0.1, stopped by PID afterwards."""
    from tests.support.moto import moto_server

    with moto_server() as endpoint:
        yield endpoint


def aws(service: str, endpoint: str) -> Any:
    """A boto3 client of moto."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_KEY,
    )


def moto_image(endpoint: str) -> str:
    """An x86_64 AMI moto knows: the module looks ``image_id`` up for its root device name."""
    images = aws("ec2", endpoint).describe_images(Owners=["amazon"])["Images"]
    usable = [
        image["ImageId"]
        for image in images
        if image.get("Architecture") == "x86_64" and image.get("RootDeviceName")
    ]
    assert usable, "moto knows no amazon x86_64 image"
    return sorted(usable)[0]


def decoded(user_data: str) -> str:
    return base64.b64decode(user_data).decode()


def worker_token_secret(endpoint: str, name: str) -> str:
    """The ARN of the deployment's (empty) worker token secret: the Node fills it at its start."""
    secrets = aws("secretsmanager", endpoint).list_secrets()["SecretList"]
    (arn,) = [s["ARN"] for s in secrets if s["Name"].startswith(f"{name}-worker-token-")]
    return str(arn)


def check_worker_token_secret(endpoint: str, arn: str) -> None:
    """KMS-encrypted with the deployment's key, and created without a value."""
    client = aws("secretsmanager", endpoint)
    described = client.describe_secret(SecretId=arn)
    assert described["KmsKeyId"].startswith(f"arn:aws:kms:{REGION}:")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_secret_value(SecretId=arn)


def check_node(endpoint: str, outputs: dict[str, Any], database: dict[str, str]) -> None:
    """The app VM: IMDSv2, encrypted disk, filled startup script, only the app port open."""
    ec2 = aws("ec2", endpoint)
    instance_id = outputs["instance_id"]
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert instance["State"]["Name"] == "running"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"]

    user_data = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    filled = dict(line.split("=", 1) for line in decoded(user_data["UserData"]["Value"]).split())
    assert filled == {
        "version": "0.1.0",
        "region": REGION,
        "bucket": outputs["bucket"],
        "worker_group": outputs["worker_group"],
        "worker_token_secret": worker_token_secret(endpoint, "alice"),
        "client_id": "",
        **database,
    }

    (interface,) = instance["NetworkInterfaces"]  # moto leaves instance["SecurityGroups"] empty
    group_ids = [group["GroupId"] for group in interface["Groups"]]
    assert len(group_ids) == 1
    (group,) = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
    assert {rule.get("FromPort") for rule in group["IpPermissions"]} == {5000}

    volume_ids = [device["Ebs"]["VolumeId"] for device in instance["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert volumes and all(volume["Encrypted"] for volume in volumes)


def check_bucket(endpoint: str, bucket: str) -> None:
    """Private, versioned, KMS-encrypted."""
    s3 = aws("s3", endpoint)
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


def as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def role_policy(endpoint: str, prefix: str, but_not: str = "") -> dict[str, list[str]]:
    """Action -> resources of the inline policy of the one role named ``prefix...``.

    moto stores IAM policies but does not enforce them: this reads the policy back.
    """
    iam = aws("iam", endpoint)
    roles = [role["RoleName"] for role in iam.list_roles()["Roles"]]
    (role,) = [
        name
        for name in roles
        if name.startswith(prefix) and not (but_not and name.startswith(but_not))
    ]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    allowed: dict[str, list[str]] = {}
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            allowed.setdefault(action, []).extend(as_list(statement["Resource"]))
    return allowed


def check_role(endpoint: str, name: str, outputs: dict[str, Any]) -> None:
    """Least privilege: the bucket (and its key), the database secret, the Workers' token secret
    (write, and read back), its own ASG."""
    allowed = role_policy(endpoint, f"{name}-", but_not=f"{name}-wkr-")
    bucket_arn = f"arn:aws:s3:::{outputs['bucket']}"
    group_arn = (
        f"arn:aws:autoscaling:{REGION}:123456789012:autoScalingGroup:*:"
        f"autoScalingGroupName/{outputs['worker_group']}"
    )
    token_arn = worker_token_secret(endpoint, name)
    expected = {
        "s3:ListBucket": [bucket_arn],
        "s3:GetBucketLocation": [bucket_arn],
        "s3:GetObject": [f"{bucket_arn}/*"],
        "s3:PutObject": [f"{bucket_arn}/*"],
        "s3:DeleteObject": [f"{bucket_arn}/*"],
        "s3:AbortMultipartUpload": [f"{bucket_arn}/*"],
        "s3:ListMultipartUploadParts": [f"{bucket_arn}/*"],
        "secretsmanager:PutSecretValue": [token_arn],
        "secretsmanager:GetSecretValue": [token_arn],
        "autoscaling:SetDesiredCapacity": [group_arn],
        # Describe calls take no resource-level permissions
        "autoscaling:DescribeAutoScalingGroups": ["*"],
        "autoscaling:DescribeScalingActivities": ["*"],
    }
    if outputs.get("database_url_secret"):
        expected["secretsmanager:GetSecretValue"].insert(0, outputs["database_url_secret"])
        expected["secretsmanager:DescribeSecret"] = [outputs["database_url_secret"]]
    key_actions = {action: allowed.pop(action) for action in ("kms:Decrypt", "kms:GenerateDataKey")}
    assert allowed == expected
    # one statement for S3's use of the key, one for Secrets Manager's: the same key
    assert [len(resources) for resources in key_actions.values()] == [2, 2]
    assert all(
        resource.startswith(f"arn:aws:kms:{REGION}:")
        for resources in key_actions.values()
        for resource in resources
    )


def check_worker_role(endpoint: str, name: str) -> None:
    """The Workers' role reads their token's secret (and decrypts it), nothing else."""
    allowed = role_policy(endpoint, f"{name}-wkr-")
    (key,) = allowed.pop("kms:Decrypt")
    assert key.startswith(f"arn:aws:kms:{REGION}:")
    assert allowed == {"secretsmanager:GetSecretValue": [worker_token_secret(endpoint, name)]}


def check_workers(endpoint: str, outputs: dict[str, Any]) -> None:
    """The ASG holds workers_min Workers whose script points at the Node's private URL."""
    group = aws("autoscaling", endpoint).describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["worker_group"]]
    )["AutoScalingGroups"][0]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (1, 1, 2)
    assert [worker["LifecycleState"] for worker in group["Instances"]] == ["InService"]

    template = group["LaunchTemplate"]
    (version,) = aws("ec2", endpoint).describe_launch_template_versions(
        LaunchTemplateId=template["LaunchTemplateId"], Versions=[template["Version"]]
    )["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert decoded(data["UserData"]) == (
        f"#!/bin/sh\necho node=http://{outputs['private_ip']}:5000 version=0.1.0 region={REGION}"
        f" token={worker_token_secret(endpoint, 'alice')} client=\n"
    )
    assert data["IamInstanceProfile"]["Arn"].split("/")[-1].startswith("alice-wkr-")
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert all(device["Ebs"]["Encrypted"] for device in data["BlockDeviceMappings"])


def check_database(endpoint: str, outputs: dict[str, Any]) -> dict[str, str]:
    """RDS PostgreSQL whose password only Secrets Manager holds; what the app script receives."""
    secret_arn = outputs["database_url_secret"]
    assert secret_arn.startswith(f"arn:aws:secretsmanager:{REGION}:")
    (instance,) = aws("rds", endpoint).describe_db_instances()["DBInstances"]
    assert instance["MasterUserSecret"]["SecretArn"] == secret_arn
    assert instance["StorageEncrypted"] and not instance["PubliclyAccessible"]
    secret = json.loads(
        aws("secretsmanager", endpoint).get_secret_value(SecretId=secret_arn)["SecretString"]
    )
    assert set(secret) == {"username", "password"}
    assert secret["password"] not in json.dumps(outputs)
    return {
        "database_host": instance["Endpoint"]["Address"],
        "database_port": "5432",
        "database_name": "pygrid",
        "database_secret": secret_arn,
    }


NO_DATABASE = {"database_host": "", "database_port": "", "database_name": "", "database_secret": ""}


@needs_terraform
@pytest.mark.slow
@pytest.mark.parametrize(
    "database",
    [
        "embedded",
        pytest.param(
            "managed",
            marks=pytest.mark.skipif(
                not os.environ.get("PYGRID_TEST_AWS_MANAGED_DB"),
                reason="RDS in moto takes ~3.5 min (apply + destroy): set PYGRID_TEST_AWS_MANAGED_DB=1",
            ),
        ),
    ],
)
def test_apply_then_destroy_against_moto(tmp_path: Path, moto_endpoint: str, database: str) -> None:
    rc = cli_config(tmp_path)
    call = module_call(
        app="node",
        name="alice",
        image_id=moto_image(moto_endpoint),
        database=database,
        workers_min=1,
        workers_max=2,
    )
    root = write_root(tmp_path / "root", moto_endpoint, modules={"pygrid": call})
    run(["init", "-backend=false", "-input=false"], root, rc)

    try:
        run(["apply", "-auto-approve", "-input=false"], root, rc)
        # terraform output -json leaves out outputs whose value is null
        printed = json.loads(run(["output", "-json"], root, rc))
        outputs = {name: item["value"] for name, item in printed.items()}

        assert outputs["app_url"] == f"http://{outputs['public_ip']}:5000"
        assert outputs["instance_id"].startswith("i-")
        assert outputs["bucket"].startswith("alice-")
        assert outputs["worker_group"] == "alice-workers"
        assert (outputs["cloud"], outputs["region"]) == ("aws", REGION)
        if database == "managed":
            filled = check_database(moto_endpoint, outputs)
        else:
            assert "database_url_secret" not in outputs
            filled = NO_DATABASE
        check_node(moto_endpoint, outputs, filled)
        check_bucket(moto_endpoint, outputs["bucket"])
        check_role(moto_endpoint, "alice", outputs)
        check_worker_role(moto_endpoint, "alice")
        check_worker_token_secret(moto_endpoint, worker_token_secret(moto_endpoint, "alice"))
        check_workers(moto_endpoint, outputs)
    finally:
        # apply read every resource back a moment ago: refreshing them again only costs time
        run(["destroy", "-auto-approve", "-input=false", "-refresh=false"], root, rc)

    assert aws("s3", moto_endpoint).list_buckets()["Buckets"] == []
    groups = aws("autoscaling", moto_endpoint).describe_auto_scaling_groups()
    assert groups["AutoScalingGroups"] == []
    assert aws("rds", moto_endpoint).describe_db_instances()["DBInstances"] == []
    assert aws("secretsmanager", moto_endpoint).list_secrets()["SecretList"] == []
    snapshots = aws("rds", moto_endpoint).describe_db_snapshots()["DBSnapshots"]
    kept = [snapshot["DBSnapshotIdentifier"] for snapshot in snapshots]
    # destroy keeps exactly one thing: the managed database's final snapshot
    assert len(kept) == (1 if database == "managed" else 0)
    assert all(name.startswith("alice-final-") for name in kept)
    assert not list(MODULE.glob(".terraform*")) and not list(MODULE.glob("*.tfstate*"))
