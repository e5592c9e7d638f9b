"""One contract suite for every cloud provider (STYLE.md rule 6), then each provider's own promises.

The ``harness`` fixture runs each contract test against:

- ``local``: the reference provider, with real local processes;
- ``aws``: boto3 against a real moto server process on 127.0.0.1 (an Auto Scaling group from a
  launch template; moto really starts and terminates its instances);
- ``gcp``: the real google-cloud-compute REST clients against `GceStub`;
- ``azure``: the real azure-mgmt-compute client against `AzureStub`.

Then the autoscaling policy: `desired_workers` table-driven, and `Autoscaler` with a fake clock
on the local provider.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pygrid.providers import (
    PROVIDERS,
    STATES,
    CloudProvider,
    GroupNotFound,
    MissingCredentials,
    ProviderError,
    SizeOutOfBounds,
    get_provider,
)
from pygrid.providers.autoscale import Autoscaler, desired_workers
from pygrid.providers.aws import AWSProvider
from pygrid.providers.gcp import GCPProvider
from pygrid.providers.local import LocalProvider
from tests.support.cloud_stubs import AzureStub, GceStub, ImdsStub
from tests.support.moto import FAKE_AWS_ENV, HOST, moto_server

pytestmark = pytest.mark.cloud

AWS_REGION = "us-east-1"
GCP_PROJECT = "pygrid-test"
GCP_REGION = "europe-west2"
AZURE_SUBSCRIPTION = "00000000-0000-4000-8000-000000000000"
AZURE_GROUP = "pygrid-test"
#: A harmless stand-in for ``pygrid worker`` (which does not exist yet).
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
LIVE = {"pending", "running"}

MISSING_AWS = (
    "AWS credentials not found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
    "or run `aws configure`"
)
MISSING_GCP = (
    "Google Cloud credentials not found: set GOOGLE_APPLICATION_CREDENTIALS to a service account "
    "key file, or run `gcloud auth application-default login`"
)
MISSING_GCP_PROJECT = (
    "Google Cloud project not set: pass project=..., set GOOGLE_CLOUD_PROJECT, or use "
    "credentials that name one (`gcloud auth application-default set-quota-project PROJECT`)"
)
MISSING_AZURE = (
    "Azure credentials not found: set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET "
    "(a service principal), use a managed identity, or run `az login`"
)
MISSING_AZURE_SUBSCRIPTION = (
    "Azure subscription not set: set AZURE_SUBSCRIPTION_ID or pass subscription_id=... "
    "(`az account show --query id -o tsv` prints yours)"
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ids(provider: CloudProvider, group: str) -> set[str]:
    return {instance.id for instance in provider.group_status(group).instances}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing goes past 127.0.0.1, and no endpoint leaks in from the developer's shell."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", HOST)
    for name in ("PYGRID_AWS_ENDPOINT_URL", "PYGRID_GCP_ENDPOINT_URL", "PYGRID_AZURE_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server process for the whole session, with one launch template for the groups."""
    import boto3

    with moto_server() as endpoint:
        ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name=AWS_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        ec2.create_launch_template(
            LaunchTemplateName="pygrid-worker",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        ec2.close()
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Fake credentials in the environment, as the Node on EC2 would get from its role."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    return moto_endpoint


@pytest.fixture
def gce() -> Iterator[GceStub]:
    with GceStub(page_size=2) as stub:
        yield stub


@pytest.fixture
def azure() -> Iterator[AzureStub]:
    with AzureStub(page_size=2) as stub:
        yield stub


def clear_env(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name)


class Harness:
    """One implementation under test: a provider, and how to make groups for it."""

    name: str
    provider: CloudProvider
    unknown_group: str
    #: The exact message `check_credentials` gives in `without_credentials`.
    missing_message = ""

    def make_group(self, minimum: int, maximum: int, desired: int) -> str:
        """Create a fresh group and return its id."""
        raise NotImplementedError

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CloudProvider:
        """A provider in an environment with no credentials at all."""
        raise NotImplementedError

    def close(self) -> None:
        self.provider.close()


class LocalHarness(Harness):
    name = "local"
    unknown_group = "no-such-group"

    def __init__(self, tmp_path: Path) -> None:
        self.provider = self.local = LocalProvider(tmp_path / "groups", stop_timeout=5)

    def make_group(self, minimum: int, maximum: int, desired: int) -> str:
        group = unique("workers")
        self.local.create_group(group, minimum, maximum, SLEEPER, desired=desired)
        return group

    def close(self) -> None:
        for group in self.local.list_groups():
            self.local.delete_group(group)


class AWSHarness(Harness):
    name = "aws"
    unknown_group = "no-such-group"
    missing_message = MISSING_AWS

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.provider = get_provider("aws", region=AWS_REGION, endpoint_url=endpoint)
        self.autoscaling = boto3.client(
            "autoscaling", endpoint_url=endpoint, region_name=AWS_REGION
        )

    def make_group(self, minimum: int, maximum: int, desired: int) -> str:
        group = unique("pygrid-workers")
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group,
            LaunchTemplate={"LaunchTemplateName": "pygrid-worker", "Version": "$Latest"},
            MinSize=minimum,
            MaxSize=maximum,
            DesiredCapacity=desired,
            AvailabilityZones=[f"{AWS_REGION}a"],
        )
        return group

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CloudProvider:
        clear_env(monkeypatch, "AWS_")
        for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            empty = tmp_path / name.lower()
            empty.write_text("")
            monkeypatch.setenv(name, str(empty))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
        return get_provider("aws", region=AWS_REGION, endpoint_url=self.endpoint)

    def close(self) -> None:
        self.provider.close()
        self.autoscaling.close()


class GCPHarness(Harness):
    name = "gcp"
    unknown_group = "no-such-group"
    missing_message = MISSING_GCP

    def __init__(self, stub: GceStub) -> None:
        self.stub = stub
        self.provider = get_provider(
            "gcp", project=GCP_PROJECT, region=GCP_REGION, endpoint_url=stub.url
        )

    def make_group(self, minimum: int, maximum: int, desired: int) -> str:
        group = unique("workers")
        self.stub.add_group(GCP_PROJECT, GCP_REGION, group, desired, minimum, maximum)
        return group

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CloudProvider:
        from google.auth.compute_engine import _metadata

        clear_env(monkeypatch, "GOOGLE_", "GCLOUD_", "CLOUDSDK_")
        (tmp_path / "gcloud").mkdir()
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        # Not on GCE: never probe the metadata server (read by google-auth at import time).
        monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
        # Google's endpoint is never reached: the check fails before any request.
        return get_provider("gcp", project=GCP_PROJECT, region=GCP_REGION)


class AzureHarness(Harness):
    name = "azure"
    unknown_group = f"{AZURE_GROUP}/no-such-scale-set"
    missing_message = MISSING_AZURE

    def __init__(self, stub: AzureStub) -> None:
        self.stub = stub
        self.provider = get_provider(
            "azure",
            subscription_id=AZURE_SUBSCRIPTION,
            endpoint_url=stub.url,
            polling_interval=0.01,
        )
        self.imds: ImdsStub | None = None

    def make_group(self, minimum: int, maximum: int, desired: int) -> str:
        name = unique("workers")
        self.stub.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, name, desired, minimum, maximum)
        return f"{AZURE_GROUP}/{name}"

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CloudProvider:
        clear_env(monkeypatch, "AZURE_", "MSI_", "IDENTITY_")
        monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", AZURE_SUBSCRIPTION)
        # A VM without managed identity answers at once; the real 169.254.169.254 is never probed.
        self.imds = ImdsStub()
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.imds.start())
        # No `az`, `azd` or `pwsh` to fall back on, and no token cache in HOME.
        (tmp_path / "bin").mkdir()
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
        monkeypatch.setenv("HOME", str(tmp_path))
        return get_provider("azure")  # the default credential chain, Azure's endpoint

    def close(self) -> None:
        self.provider.close()
        if self.imds is not None:
            self.imds.stop()


@pytest.fixture(params=["local", "aws", "gcp", "azure"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Every provider implementation, ready to make groups."""
    made: Harness
    if request.param == "local":
        made = LocalHarness(tmp_path)
    elif request.param == "aws":
        made = AWSHarness(request.getfixturevalue("aws_env"))
    elif request.param == "gcp":
        made = GCPHarness(request.getfixturevalue("gce"))
    else:
        made = AzureHarness(request.getfixturevalue("azure"))
    yield made
    made.close()


# --- the contract: every implementation ----------------------------------------------------------


def test_group_status_reads_sizes_bounds_and_members(harness: Harness) -> None:
    # Prepare
    group = harness.make_group(minimum=0, maximum=3, desired=1)

    # Execute
    status = harness.provider.group_status(group)

    # Assert
    assert (status.group, status.desired, status.minimum, status.maximum) == (group, 1, 0, 3)
    assert len(status.instances) == 1
    assert status.instances[0].state in LIVE
    assert status.count("pending", "running") == 1
    assert json.loads(json.dumps(status.to_dict()))["instances"][0]["id"] == status.instances[0].id


def test_resize_up_and_down_changes_desired_and_members(harness: Harness) -> None:
    # Prepare
    provider = harness.provider
    group = harness.make_group(minimum=0, maximum=3, desired=1)
    first = ids(provider, group)

    # Execute / Assert: up
    provider.resize(group, 3)
    status = provider.group_status(group)
    assert status.desired == 3
    assert len(status.instances) == 3
    assert first < {instance.id for instance in status.instances}
    assert {instance.state for instance in status.instances} <= LIVE

    # Execute / Assert: down
    three = {instance.id for instance in status.instances}
    provider.resize(group, 1)
    status = provider.group_status(group)
    assert status.desired == 1
    assert len(status.instances) == 1
    assert all(
        provider.instance_state(gone) == "terminated" for gone in three - ids(provider, group)
    )

    # Execute / Assert: to zero
    provider.resize(group, 0)
    assert provider.group_status(group).desired == 0
    assert provider.group_status(group).instances == []


def test_resize_to_the_current_size_changes_nothing(harness: Harness) -> None:
    # Prepare
    group = harness.make_group(minimum=0, maximum=3, desired=2)
    before = harness.provider.group_status(group)

    # Execute
    harness.provider.resize(group, 2)
    harness.provider.resize(group, 2)

    # Assert
    assert harness.provider.group_status(group) == before


@pytest.mark.parametrize("desired", [-1, 0, 4, 100])
def test_resize_outside_the_bounds_is_refused(harness: Harness, desired: int) -> None:
    # Prepare
    group = harness.make_group(minimum=1, maximum=3, desired=2)
    before = harness.provider.group_status(group)

    # Execute
    with pytest.raises(ValueError, match=r"within \[1, 3\]") as raised:
        harness.provider.resize(group, desired)

    # Assert
    assert isinstance(raised.value, SizeOutOfBounds)
    assert harness.provider.group_status(group) == before


@pytest.mark.parametrize("desired", [1.5, "2", True, None])
def test_resize_needs_an_int(harness: Harness, desired: Any) -> None:
    # Prepare
    group = harness.make_group(minimum=0, maximum=3, desired=1)
    before = harness.provider.group_status(group)

    # Execute
    with pytest.raises(TypeError, match="must be an int"):
        harness.provider.resize(group, desired)

    # Assert
    assert harness.provider.group_status(group) == before


def test_unknown_group_is_reported(harness: Harness) -> None:
    # Execute / Assert
    with pytest.raises(GroupNotFound):
        harness.provider.group_status(harness.unknown_group)
    with pytest.raises(GroupNotFound):
        harness.provider.resize(harness.unknown_group, 1)


def test_instance_state_is_the_normalised_state_group_status_reports(harness: Harness) -> None:
    # Prepare
    group = harness.make_group(minimum=0, maximum=3, desired=2)

    # Execute
    status = harness.provider.group_status(group)
    states = {i.id: harness.provider.instance_state(i.id) for i in status.instances}

    # Assert
    assert states == {instance.id: instance.state for instance in status.instances}
    assert set(states.values()) <= set(STATES)


def test_check_credentials_passes_with_credentials(harness: Harness) -> None:
    # Execute / Assert: does not raise
    harness.provider.check_credentials()


def test_check_credentials_names_what_is_missing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if harness.name == "local":
        pytest.skip("local processes need no credentials")
    # Prepare
    provider = harness.without_credentials(monkeypatch, tmp_path)

    # Execute
    with pytest.raises(MissingCredentials) as raised:
        provider.check_credentials()
    provider.close()

    # Assert
    assert str(raised.value) == harness.missing_message


# --- the registry --------------------------------------------------------------------------------


def test_every_registered_provider_implements_the_contract() -> None:
    from pygrid.providers import resolve_provider

    # Execute
    classes = {name: resolve_provider(name) for name in PROVIDERS}

    # Assert
    assert sorted(classes) == ["aws", "azure", "gcp", "local"]
    for name, provider_class in classes.items():
        assert issubclass(provider_class, CloudProvider)
        assert provider_class.name == name


@pytest.mark.parametrize("name", ["digitalocean", "AWS", ""])
def test_unknown_provider_names_the_known_ones(name: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="known providers: aws, azure, gcp, local"):
        get_provider(name)


def test_get_provider_passes_the_options(tmp_path: Path) -> None:
    # Execute
    provider = get_provider("local", root=tmp_path / "groups", command=SLEEPER)

    # Assert
    assert isinstance(provider, LocalProvider)
    assert provider.root == tmp_path / "groups"
    assert provider.command == SLEEPER


def test_importing_the_providers_imports_no_cloud_sdk() -> None:
    # Prepare: a fresh interpreter, since this one has loaded every SDK by now
    code = (
        "import json, sys\n"
        "import pygrid.providers, pygrid.providers.autoscale, pygrid.providers.local\n"
        "import pygrid.providers.aws, pygrid.providers.gcp, pygrid.providers.azure\n"
        "sdks = {'boto3', 'botocore', 'google', 'azure'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in sdks)))\n"
    )

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    # Assert
    assert json.loads(result.stdout) == []


# --- the local provider --------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalProvider]:
    """The local provider; every group it made is deleted (its processes stopped) afterwards."""
    provider = LocalProvider(tmp_path / "groups", command=SLEEPER, stop_timeout=5)
    yield provider
    for group in provider.list_groups():
        provider.delete_group(group)


def pids(provider: LocalProvider, group: str) -> list[int]:
    state = json.loads((provider.root / group / "state.json").read_text())
    return [record["pid"] for record in state["instances"]]


def pid_of(provider: LocalProvider, group: str, instance_id: str) -> int:
    state = json.loads((provider.root / group / "state.json").read_text())
    [pid] = [record["pid"] for record in state["instances"] if record["id"] == instance_id]
    return int(pid)


def test_local_members_are_real_processes_stopped_by_resize(local: LocalProvider) -> None:
    # Prepare
    local.create_group("workers", 0, 3, desired=2)
    running = [psutil.Process(pid) for pid in pids(local, "workers")]

    # Execute
    local.resize("workers", 0)

    # Assert
    assert len(running) == 2
    assert not any(process.is_running() for process in running)
    assert local.list_groups() == ["workers"]


def test_local_workers_know_their_group_and_id(local: LocalProvider) -> None:
    # Prepare
    command = [
        sys.executable,
        "-c",
        "import os, time; print(os.environ['PYGRID_WORKER_GROUP'], "
        "os.environ['PYGRID_WORKER_ID'], flush=True); time.sleep(600)",
    ]

    # Execute
    status = local.create_group("workers", 0, 2, command, desired=1)

    # Assert
    log = local.root / "workers" / f"{status.instances[0].id}.log"
    wait_for(lambda: log.exists() and log.read_text().strip() != "")
    assert log.read_text().split() == ["workers", status.instances[0].id]


def test_local_worker_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    # Prepare
    provider = LocalProvider(tmp_path / "groups", stop_timeout=0.3)
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)",
    ]
    status = provider.create_group("workers", 0, 1, stubborn, desired=1)
    log = provider.root / "workers" / f"{status.instances[0].id}.log"
    wait_for(lambda: log.exists() and "ready" in log.read_text())
    process = psutil.Process(pids(provider, "workers")[0])

    # Execute
    provider.resize("workers", 0)

    # Assert
    assert not process.is_running()
    provider.delete_group("workers")


def test_local_member_that_died_is_terminated_then_replaced(local: LocalProvider) -> None:
    # Prepare
    local.create_group("workers", 0, 3, desired=2)
    dead_id = local.group_status("workers").instances[0].id
    os.kill(pid_of(local, "workers", dead_id), signal.SIGKILL)  # it crashed
    wait_for(lambda: local.instance_state(dead_id) == "terminated")

    # Execute
    reported = local.group_status("workers")
    local.resize("workers", 2)

    # Assert
    assert {i.id: i.state for i in reported.instances}[dead_id] == "terminated"
    after = local.group_status("workers")
    assert after.desired == 2
    assert dead_id not in {instance.id for instance in after.instances}
    assert [instance.state for instance in after.instances] == ["running", "running"]


def test_local_reused_pid_is_never_signalled(local: LocalProvider) -> None:
    # Prepare: the recorded worker is gone and an unrelated process now has its PID
    local.create_group("workers", 0, 3, desired=1)
    bystander = subprocess.Popen(SLEEPER)
    state_file = local.root / "workers" / "state.json"
    state = json.loads(state_file.read_text())
    os.kill(state["instances"][0]["pid"], signal.SIGKILL)
    started = psutil.Process(bystander.pid).create_time()
    state["instances"][0].update(pid=bystander.pid, create_time=started - 5)
    state_file.write_text(json.dumps(state))

    # Execute
    status = local.group_status("workers")
    local.resize("workers", 0)

    # Assert
    assert [instance.state for instance in status.instances] == ["terminated"]
    assert bystander.poll() is None
    bystander.kill()
    bystander.wait()


def test_local_groups_are_shared_through_their_folder(local: LocalProvider) -> None:
    # Prepare: another provider object (another process, in real use) over the same folder
    local.create_group("workers", 0, 3, desired=2)
    other = LocalProvider(local.root, stop_timeout=5)
    processes = [psutil.Process(pid) for pid in pids(local, "workers")]

    # Execute
    seen = other.group_status("workers")
    other.resize("workers", 0)

    # Assert
    assert seen.desired == 2
    assert [instance.state for instance in seen.instances] == ["running", "running"]
    wait_for(lambda: not any(process.is_running() for process in processes))


@pytest.mark.parametrize(
    ("group", "minimum", "maximum"),
    [
        ("../escape", 0, 1),
        ("", 0, 1),
        (".hidden", 0, 1),
        ("a/b", 0, 1),
        ("ok", 2, 1),
        ("ok", -1, 1),
    ],
)
def test_local_create_group_rejects_bad_input(
    local: LocalProvider, group: str, minimum: int, maximum: int
) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        local.create_group(group, minimum, maximum)
    assert local.list_groups() == []


def test_local_create_group_twice_is_refused_and_delete_is_idempotent(local: LocalProvider) -> None:
    # Prepare
    local.create_group("workers", 0, 2, desired=1)
    process = psutil.Process(pids(local, "workers")[0])

    # Execute / Assert
    with pytest.raises(ValueError, match="exists already"):
        local.create_group("workers", 0, 2)
    local.delete_group("workers")
    local.delete_group("workers")
    assert local.list_groups() == []
    assert not process.is_running()
    with pytest.raises(GroupNotFound):
        local.group_status("workers")


def test_local_command_that_cannot_start_creates_no_group(local: LocalProvider) -> None:
    # Execute
    with pytest.raises(ProviderError, match="cannot start Worker command"):
        local.create_group("workers", 1, 2, ["/nonexistent/pygrid-worker"])

    # Assert
    assert local.list_groups() == []


def test_local_concurrent_resizes_leave_a_consistent_group(local: LocalProvider) -> None:
    # Prepare: two providers (two Node replicas) resizing one group at once
    group = unique("workers")
    local.create_group(group, 0, 4, desired=0)
    other = LocalProvider(local.root, stop_timeout=5)
    sizes = [4, 1, 3, 2] * 3

    # Execute
    threads = [
        threading.Thread(target=provider.resize, args=(group, size))
        for provider, size in zip([local, other] * 6, sizes, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Assert
    status = local.group_status(group)
    assert status.count("running") == status.desired == len(status.instances)
    running = [p for p in psutil.process_iter() if is_worker_of(p, group)]
    assert len(running) == status.desired


def is_worker_of(process: psutil.Process, group: str) -> bool:
    """Whether ``process`` is a live Worker of ``group`` (whoever started it)."""
    try:
        alive = process.status() not in {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
        return alive and process.environ().get("PYGRID_WORKER_GROUP") == group
    except psutil.Error:
        return False


# --- AWS -----------------------------------------------------------------------------------------


def test_aws_group_by_arn(aws_env: str) -> None:
    # Prepare
    harness = AWSHarness(aws_env)
    group = harness.make_group(minimum=0, maximum=3, desired=1)
    [description] = harness.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    arn = description["AutoScalingGroupARN"]

    # Execute
    harness.provider.resize(arn, 2)
    status = harness.provider.group_status(arn)

    # Assert
    assert (status.group, status.desired, len(status.instances)) == (arn, 2, 2)
    harness.close()


def test_aws_resize_does_not_honor_the_group_cooldown(aws_env: str) -> None:
    # Prepare
    harness = AWSHarness(aws_env)
    group = harness.make_group(minimum=0, maximum=3, desired=0)
    sent: list[dict[str, Any]] = []
    assert isinstance(harness.provider, AWSProvider)
    client = harness.provider._client("autoscaling")
    client.meta.events.register(
        "provide-client-params.autoscaling.SetDesiredCapacity",
        lambda params, **_: sent.append(dict(params)),
    )

    # Execute
    harness.provider.resize(group, 2)

    # Assert
    assert sent == [{"AutoScalingGroupName": group, "DesiredCapacity": 2, "HonorCooldown": False}]
    harness.close()


def test_aws_endpoint_comes_from_the_environment(
    aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("PYGRID_AWS_ENDPOINT_URL", aws_env)
    harness = AWSHarness(aws_env)
    group = harness.make_group(minimum=0, maximum=2, desired=1)

    # Execute
    with get_provider("aws") as provider:
        status = provider.group_status(group)

    # Assert
    assert status.desired == 1
    harness.close()


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("moon-base-1", "invalid AWS region 'moon-base-1'"),
        ("us_east_1", "invalid AWS region 'us_east_1'"),
        (None, "AWS region not set: pass region=..., set AWS_DEFAULT_REGION or AWS_REGION"),
    ],
)
def test_aws_bad_or_missing_region_is_reported(
    aws_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, region: str | None, message: str
) -> None:
    # Prepare: credentials, but no region anywhere but the argument
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    provider = get_provider("aws", region=region, endpoint_url=aws_env)

    # Execute / Assert
    with pytest.raises(MissingCredentials) as raised:
        provider.check_credentials()
    assert str(raised.value).startswith(message)
    with pytest.raises(MissingCredentials):
        provider.group_status("any")


# --- GCP -----------------------------------------------------------------------------------------


def test_gcp_sends_the_managed_instance_group_calls(gce: GceStub) -> None:
    # Prepare
    gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=5)
    mig = f"/compute/v1/projects/{GCP_PROJECT}/regions/{GCP_REGION}/instanceGroupManagers/workers"

    # Execute
    with GCPHarness(gce).provider as provider:
        provider.resize("workers", 3)
        status = provider.group_status("workers")

    # Assert
    assert [r.query for r in gce.requests_to("POST", "/resize$")] == [{"size": "3"}]
    assert {r.path for r in gce.requests_to("POST", "")} == {
        f"{mig}/resize",
        f"{mig}/listManagedInstances",
    }
    # three members, two per page: the pager followed the page token
    assert [
        r.query.get("pageToken") for r in gce.requests_to("POST", "/listManagedInstances$")
    ] == [
        None,
        "2",
    ]
    assert len(status.instances) == 3
    assert all("Authorization" not in r.headers for r in gce.requests)


@pytest.mark.parametrize(
    "group",
    [
        f"projects/{GCP_PROJECT}/regions/{GCP_REGION}/instanceGroupManagers/workers",
        "https://www.googleapis.com/compute/v1/projects/"
        f"{GCP_PROJECT}/regions/{GCP_REGION}/instanceGroupManagers/workers",
    ],
)
def test_gcp_group_by_path_needs_no_project_or_region(
    gce: GceStub, monkeypatch: pytest.MonkeyPatch, group: str
) -> None:
    # Prepare
    clear_env(monkeypatch, "GOOGLE_", "CLOUDSDK_")
    gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=2, minimum=0, maximum=3)

    # Execute
    with get_provider("gcp", endpoint_url=gce.url) as provider:
        provider.resize(group, 1)
        status = provider.group_status(group)

    # Assert
    assert (status.group, status.desired, len(status.instances)) == (group, 1, 1)


@pytest.mark.parametrize(
    ("gce_status", "state"),
    [
        ("PROVISIONING", "pending"),
        ("STAGING", "pending"),
        ("RUNNING", "running"),
        ("STOPPING", "stopping"),
        ("SUSPENDED", "stopped"),
        ("TERMINATED", "stopped"),  # GCE's word for a stopped VM that still exists
        ("SOMETHING_NEW", "unknown"),
    ],
)
def test_gcp_states_are_normalised(gce: GceStub, gce_status: str, state: str) -> None:
    # Prepare
    group = gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=3)
    group.members[0].status = gce_status

    # Execute
    with GCPHarness(gce).provider as provider:
        status = provider.group_status("workers")
        read = provider.instance_state(status.instances[0].id)

    # Assert
    assert [instance.state for instance in status.instances] == [state]
    assert read == state


def test_gcp_member_being_deleted_is_stopping(gce: GceStub) -> None:
    # Prepare
    group = gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=3)
    group.members[0].current_action = "DELETING"

    # Execute
    with GCPHarness(gce).provider as provider:
        status = provider.group_status("workers")

    # Assert
    assert [instance.state for instance in status.instances] == ["stopping"]


def test_gcp_instance_ids_in_other_forms(gce: GceStub) -> None:
    # Prepare
    group = gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=3)
    vm = group.members[0]

    # Execute
    with GCPHarness(gce).provider as provider:
        states = [
            provider.instance_state(f"{vm.zone}/{vm.name}"),
            provider.instance_state(vm.self_link()),
            provider.instance_state(f"projects/{GCP_PROJECT}/zones/{vm.zone}/instances/gone"),
        ]
        with pytest.raises(ValueError, match="invalid Compute Engine instance id"):
            provider.instance_state("1234567890")

    # Assert
    assert states == ["running", "running", "terminated"]


def test_gcp_bounds_come_from_options_when_the_mig_has_no_labels(gce: GceStub) -> None:
    # Prepare
    gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1)
    options = {"project": GCP_PROJECT, "region": GCP_REGION, "endpoint_url": gce.url}

    # Execute
    with get_provider("gcp", maximum=4, **options) as provider:
        status = provider.group_status("workers")
    with get_provider("gcp", **options) as provider, pytest.raises(ProviderError) as raised:
        provider.resize("workers", 2)

    # Assert
    assert (status.minimum, status.maximum) == (0, 4)
    assert "pygrid_workers_max" in str(raised.value)
    assert gce.requests_to("POST", "/resize$") == []


def test_gcp_api_error_is_a_provider_error(gce: GceStub) -> None:
    # Prepare
    gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=3)
    error = {"code": 400, "message": "Quota 'CPUS' exceeded", "errors": [{"reason": "quota"}]}
    gce.fail_next("POST", "/resize$", 400, {"error": error})

    # Execute
    with GCPHarness(gce).provider as provider:
        with pytest.raises(ProviderError, match="Quota 'CPUS' exceeded"):
            provider.resize("workers", 3)
        status = provider.group_status("workers")

    # Assert
    assert status.desired == 1


def test_gcp_endpoint_comes_from_the_environment(
    gce: GceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    gce.add_group(GCP_PROJECT, GCP_REGION, "workers", size=1, minimum=0, maximum=3)
    monkeypatch.setenv("PYGRID_GCP_ENDPOINT_URL", gce.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", GCP_PROJECT)
    monkeypatch.setenv("CLOUDSDK_COMPUTE_REGION", GCP_REGION)

    # Execute
    with get_provider("gcp") as provider:
        status = provider.group_status("workers")

    # Assert
    assert status.desired == 1


def test_gcp_missing_project_is_reported(gce: GceStub, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    clear_env(monkeypatch, "GOOGLE_", "GCLOUD_", "CLOUDSDK_")

    # Execute / Assert
    with get_provider("gcp", region=GCP_REGION, endpoint_url=gce.url) as provider:
        with pytest.raises(MissingCredentials) as raised:
            provider.check_credentials()
        with pytest.raises(MissingCredentials):
            provider.group_status("workers")
    assert str(raised.value) == MISSING_GCP_PROJECT


def test_gcp_application_default_credentials_are_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: what `gcloud auth application-default login` writes (never used to call Google)
    adc = tmp_path / "application_default_credentials.json"
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "pygrid-test.apps.example.org",
                "client_secret": "not-a-secret",
                "refresh_token": "not-a-token",
            }
        )
    )
    clear_env(monkeypatch, "GOOGLE_", "GCLOUD_", "CLOUDSDK_")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", GCP_PROJECT)

    # Execute / Assert: does not raise
    with GCPProvider(region=GCP_REGION) as provider:
        provider.check_credentials()
        assert provider.project == GCP_PROJECT


# --- Azure ---------------------------------------------------------------------------------------


def test_azure_sends_the_scale_set_calls(azure: AzureStub) -> None:
    # Prepare
    azure.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, "workers", 1, minimum=0, maximum=5)
    vmss = (
        f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{AZURE_GROUP}"
        "/providers/Microsoft.Compute/virtualMachineScaleSets/workers"
    )

    # Execute
    with AzureHarness(azure).provider as provider:
        provider.resize(f"{AZURE_GROUP}/workers", 3)
        status = provider.group_status(f"{AZURE_GROUP}/workers")

    # Assert
    [patch] = azure.requests_to("PATCH", "")
    assert (patch.path, patch.query) == (vmss, {"api-version": "2026-04-01"})
    assert patch.body == {"sku": {"name": "Standard_B1s", "tier": "Standard", "capacity": 3}}
    assert len(azure.requests_to("GET", "/operations/")) == 1  # the async operation was polled
    lists = azure.requests_to("GET", "/virtualMachines$")
    assert [r.query.get("$expand") for r in lists] == ["instanceView", "instanceView"]  # 2 pages
    assert len(status.instances) == 3
    assert all("Authorization" not in r.headers for r in azure.requests)


def test_azure_group_by_arm_id(azure: AzureStub, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the subscription comes from the id
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    scale_set = azure.add_scale_set("11111111-2222-4333-8444-555555555555", "rg", "vmss", 2, 0, 2)

    # Execute
    with get_provider("azure", endpoint_url=azure.url, polling_interval=0.01) as provider:
        provider.resize(scale_set.arm_id(), 1)
        status = provider.group_status(scale_set.arm_id())
        state = provider.instance_state(status.instances[0].id)

    # Assert
    assert (status.desired, len(status.instances), state) == (1, 1, "running")


@pytest.mark.parametrize(
    ("power_state", "provisioning_state", "state"),
    [
        ("starting", "Creating", "pending"),
        ("running", "Succeeded", "running"),
        ("stopping", "Succeeded", "stopping"),
        ("deallocating", "Succeeded", "stopping"),
        ("stopped", "Succeeded", "stopped"),
        ("deallocated", "Succeeded", "stopped"),
        ("running", "Deleting", "stopping"),
        ("hibernated-ish", "Succeeded", "unknown"),
    ],
)
def test_azure_states_are_normalised(
    azure: AzureStub, power_state: str, provisioning_state: str, state: str
) -> None:
    # Prepare
    scale_set = azure.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, "workers", 1, 0, 3)
    vm = scale_set.vms["0"]
    vm.power_state, vm.provisioning_state = power_state, provisioning_state

    # Execute
    with AzureHarness(azure).provider as provider:
        status = provider.group_status(f"{AZURE_GROUP}/workers")
        read = provider.instance_state(vm.arm_id)
        short = provider.instance_state(f"{AZURE_GROUP}/workers/0")

    # Assert
    assert [instance.state for instance in status.instances] == [state]
    assert read == short == state


def test_azure_app_vm_state(azure: AzureStub) -> None:
    # Prepare: the app VM, named by the ARM id Terraform outputs
    app = azure.add_vm(AZURE_SUBSCRIPTION, AZURE_GROUP, "pygrid-node", "deallocated")

    # Execute
    with AzureHarness(azure).provider as provider:
        states = [provider.instance_state(app.arm_id), provider.instance_state(app.arm_id + "x")]
        with pytest.raises(ValueError, match="invalid Azure VM id"):
            provider.instance_state("pygrid-node")

    # Assert
    assert states == ["stopped", "terminated"]


def test_azure_failed_operation_is_a_provider_error(azure: AzureStub) -> None:
    # Prepare
    azure.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, "workers", 1, 0, 3)
    error = {"code": "OperationNotAllowed", "message": "Operation results in exceeding quota"}
    azure.operation_result = {"status": "Failed", "error": error}

    # Execute
    with AzureHarness(azure).provider as provider:
        with pytest.raises(ProviderError, match="exceeding quota"):
            provider.resize(f"{AZURE_GROUP}/workers", 3)
        status = provider.group_status(f"{AZURE_GROUP}/workers")

    # Assert
    assert status.desired == 1


def test_azure_bounds_come_from_options_when_untagged(azure: AzureStub) -> None:
    # Prepare
    azure.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, "workers", 1)
    options = {"subscription_id": AZURE_SUBSCRIPTION, "endpoint_url": azure.url}

    # Execute
    with get_provider("azure", minimum=1, maximum=2, **options) as provider:
        status = provider.group_status(f"{AZURE_GROUP}/workers")
        with pytest.raises(SizeOutOfBounds):
            provider.resize(f"{AZURE_GROUP}/workers", 3)

    # Assert
    assert (status.minimum, status.maximum) == (1, 2)


def test_azure_endpoint_comes_from_the_environment(
    azure: AzureStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    azure.add_scale_set(AZURE_SUBSCRIPTION, AZURE_GROUP, "workers", 2, 0, 3)
    monkeypatch.setenv("PYGRID_AZURE_ENDPOINT_URL", azure.url)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", AZURE_SUBSCRIPTION)

    # Execute
    with get_provider("azure") as provider:
        status = provider.group_status(f"{AZURE_GROUP}/workers")

    # Assert
    assert status.desired == 2


class FixedCredential:
    """A credential object as an application would pass one (never sent anywhere here)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return AccessToken("token", int(time.time()) + 3600)


def test_azure_given_credential_is_checked() -> None:
    from azure.identity import CredentialUnavailableError

    # Prepare
    good, bad = FixedCredential(), FixedCredential(CredentialUnavailableError("no login"))

    # Execute
    with get_provider("azure", subscription_id=AZURE_SUBSCRIPTION, credential=good) as provider:
        provider.check_credentials()
    with get_provider("azure", subscription_id=AZURE_SUBSCRIPTION, credential=bad) as provider:
        with pytest.raises(MissingCredentials) as raised:
            provider.check_credentials()

    # Assert
    assert good.scopes == [("https://management.azure.com/.default",)]
    assert str(raised.value) == MISSING_AZURE


def test_azure_missing_subscription_is_reported(
    azure: AzureStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)

    # Execute / Assert
    with get_provider("azure", endpoint_url=azure.url) as provider:
        with pytest.raises(MissingCredentials) as raised:
            provider.check_credentials()
        with pytest.raises(MissingCredentials):
            provider.group_status(f"{AZURE_GROUP}/workers")
    assert str(raised.value) == MISSING_AZURE_SUBSCRIPTION


# --- the autoscaling policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queued", "jobs_per_worker", "minimum", "maximum", "expected"),
    [
        (0, 5, 0, 10, 0),
        (1, 5, 0, 10, 1),
        (5, 5, 0, 10, 1),
        (6, 5, 0, 10, 2),
        (0, 5, 2, 10, 2),  # the floor holds with an empty queue
        (49, 5, 0, 10, 10),
        (51, 5, 0, 10, 10),  # the ceiling holds with a long queue
        (3, 1, 0, 10, 3),
        (10**18 + 1, 10**18, 0, 5, 2),  # integer ceil: no float rounding
        (7, 3, 4, 4, 4),
        (0, 1, 0, 0, 0),
    ],
)
def test_desired_workers(
    queued: int, jobs_per_worker: int, minimum: int, maximum: int, expected: int
) -> None:
    assert desired_workers(queued, jobs_per_worker, minimum, maximum) == expected


@pytest.mark.parametrize(
    ("queued", "jobs_per_worker", "minimum", "maximum", "error"),
    [
        (-1, 5, 0, 10, ValueError),
        (1, 0, 0, 10, ValueError),
        (1, 5, -1, 10, ValueError),
        (1, 5, 3, 2, ValueError),
        (1.5, 5, 0, 10, TypeError),
        (1, 5, 0, None, TypeError),
    ],
)
def test_desired_workers_rejects_bad_input(
    queued: Any, jobs_per_worker: Any, minimum: Any, maximum: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        desired_workers(queued, jobs_per_worker, minimum, maximum)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_autoscaler_resizes_from_the_queue_and_respects_the_cooldown(
    local: LocalProvider,
) -> None:
    # Prepare
    local.create_group("workers", 0, 3, desired=0)
    clock = FakeClock()
    scaler = Autoscaler(local, "workers", 0, 3, jobs_per_worker=2, cooldown_seconds=60, clock=clock)

    # Execute / Assert
    assert scaler.step(0) is None  # already 0 workers
    assert scaler.step(3) == 2  # first resize: no cooldown to wait for
    assert local.group_status("workers").count("running") == 2
    clock.advance(59)
    assert scaler.step(6) is None  # 3 wanted, but still cooling down
    assert local.group_status("workers").desired == 2
    clock.advance(1)
    assert scaler.step(6) == 3
    clock.advance(600)
    assert scaler.step(5) is None  # unchanged: no resize
    assert scaler.last_resize == 1060.0
    assert scaler.step(0) == 0
    assert local.group_status("workers").instances == []


def test_autoscaler_stays_within_the_group_bounds(local: LocalProvider) -> None:
    # Prepare: a policy wider than the group
    local.create_group("workers", 1, 2, desired=1)
    scaler = Autoscaler(local, "workers", 0, 10, jobs_per_worker=1, cooldown_seconds=0)

    # Execute / Assert
    assert scaler.step(8) == 2
    assert scaler.step(0) == 1


def test_autoscaler_failure_starts_no_cooldown(local: LocalProvider) -> None:
    # Prepare
    local.create_group("workers", 0, 2, desired=0)
    clock = FakeClock()
    scaler = Autoscaler(local, "workers", 0, 2, jobs_per_worker=1, cooldown_seconds=60, clock=clock)
    local.delete_group("workers")

    # Execute
    with pytest.raises(GroupNotFound):
        scaler.step(1)
    local.create_group("workers", 0, 2, desired=0)

    # Assert: the next step may resize at once
    assert scaler.last_resize is None
    assert scaler.step(1) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"jobs_per_worker": 0, "cooldown_seconds": 60},
        {"jobs_per_worker": 1, "cooldown_seconds": -1},
    ],
)
def test_autoscaler_rejects_a_bad_policy(local: LocalProvider, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Autoscaler(local, "workers", 0, 2, **options)
