"""One contract suite for every secret store (STYLE.md rule 6), then the cloud Workers' token
story built on them: the Node publishes it, a Worker waits for it and is accepted.

The ``harness`` fixture runs each contract test against:

- ``local``: the reference store, files in a folder;
- ``aws``: boto3 against a real moto server process on 127.0.0.1 (Secrets Manager);
- ``gcp``: the real google-cloud-secret-manager REST client against `SecretManagerStub`;
- ``azure``: the real azure-keyvault-secrets client against `KeyVaultStub` (https, with Key
  Vault's bearer challenge), signed in as a VM's user-assigned managed identity through an
  `ImdsStub` (``AZURE_CLIENT_ID``).
"""

from __future__ import annotations

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

import pytest

from pygrid.providers import (
    SECRET_STORES,
    MissingCredentials,
    ProviderError,
    SecretStore,
    get_secret_store,
)
from pygrid.providers.base import MAX_SECRET_BYTES
from pygrid.providers.local import LocalSecretStore
from pygrid.providers.worker_secret import (
    TOKEN_NAME,
    fetch_worker_token,
    publish_in_background,
    publish_worker_token,
)
from tests.support.cloud_stubs import ImdsStub, KeyVaultStub, SecretManagerStub
from tests.support.moto import FAKE_AWS_ENV, HOST, moto_server
from tests.support.servers import free_port, run_cli, running

pytestmark = pytest.mark.cloud

AWS_REGION = "us-east-1"
GCP_PROJECT = "pygrid-test"
#: The client id of the VM's user-assigned identity, as the Azure module writes it.
AZURE_CLIENT_ID = "0f4c1b2a-3d5e-4f60-8a7b-9c8d7e6f5a4b"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing goes past 127.0.0.1, and no endpoint leaks in from the developer's shell."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", HOST)
    for name in ("PYGRID_AWS_ENDPOINT_URL", "PYGRID_GCP_SECRETS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> str:
    """Fake credentials in the environment, as a VM gets them from its role."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    return moto_endpoint


@pytest.fixture
def secret_manager() -> Iterator[SecretManagerStub]:
    with SecretManagerStub() as stub:
        yield stub


@pytest.fixture
def key_vault() -> Iterator[KeyVaultStub]:
    with KeyVaultStub() as stub:
        yield stub


@pytest.fixture
def vm_identity(monkeypatch: pytest.MonkeyPatch, key_vault: KeyVaultStub) -> Iterator[ImdsStub]:
    """An Azure VM whose only identity is user-assigned, named by AZURE_CLIENT_ID."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(name)
    with ImdsStub({AZURE_CLIENT_ID: key_vault.token}) as imds:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
        monkeypatch.setenv("AZURE_CLIENT_ID", AZURE_CLIENT_ID)
        yield imds


class FixedCredential:
    """A credential object as an application would pass one (its token goes to the stub only)."""

    def __init__(self, token: str = "", error: Exception | None = None) -> None:
        self.token = token
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        if self.error is not None:
            raise self.error
        return AccessToken(self.token, int(time.time()) + 3600)


class Harness:
    """One implementation under test: how to build its store and make secrets in it."""

    name: str
    #: Whether `write` creates a secret that does not exist (else ProviderError).
    creates_on_write: bool
    #: Names the store cannot parse.
    bad_names: list[Any]

    def store(self) -> SecretStore:
        """A store as a VM builds it (each call a new one: another process's view)."""
        raise NotImplementedError

    def make_secret(self) -> str:
        """A secret as Terraform leaves it (empty), by the name the module outputs."""
        raise NotImplementedError

    def unknown_secret(self) -> str:
        """A well-formed name of a secret that does not exist."""
        raise NotImplementedError

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SecretStore:
        """A store in an environment with no credentials at all."""
        raise NotImplementedError

    def writes(self, secret: str) -> int:
        """How many writes of ``secret`` reached the backend so far."""
        raise NotImplementedError


class LocalHarness(Harness):
    name = "local"
    creates_on_write = True
    bad_names = ["", "../escape", ".hidden", "a/b", 7]

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "secrets"

    def store(self) -> SecretStore:
        return LocalSecretStore(self.root)

    def make_secret(self) -> str:
        return unique("worker-token")

    def unknown_secret(self) -> str:
        return unique("never-written")

    def writes(self, secret: str) -> int:
        return int((self.root / secret).exists())


class AWSHarness(Harness):
    name = "aws"
    creates_on_write = False
    bad_names = ["", "arn:aws:s3:::bucket", "name with spaces", None]

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name=AWS_REGION)

    def store(self) -> SecretStore:
        # The region comes from the ARN, as on a Worker.
        return get_secret_store("aws", endpoint_url=self.endpoint)

    def make_secret(self) -> str:
        return str(self.client.create_secret(Name=unique("alice-worker-token"))["ARN"])

    def unknown_secret(self) -> str:
        return f"arn:aws:secretsmanager:{AWS_REGION}:123456789012:secret:{unique('gone')}-AbCdEf"

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SecretStore:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            empty = tmp_path / name.lower()
            empty.write_text("")
            monkeypatch.setenv(name, str(empty))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
        return self.store()

    def writes(self, secret: str) -> int:
        return len(self.client.list_secret_version_ids(SecretId=secret)["Versions"])


class GCPHarness(Harness):
    name = "gcp"
    creates_on_write = False
    bad_names = ["", "projects/p/secrets/", "projects/p/secrets/s/versions/1", "a b", 3.5]

    def __init__(self, stub: SecretManagerStub) -> None:
        self.stub = stub

    def store(self) -> SecretStore:
        return get_secret_store("gcp", endpoint_url=self.stub.url)

    def make_secret(self) -> str:
        return self.stub.add_secret(GCP_PROJECT, unique("alice-worker-token"))

    def unknown_secret(self) -> str:
        return f"projects/{GCP_PROJECT}/secrets/{unique('gone')}"

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SecretStore:
        from google.auth.compute_engine import _metadata

        for name in list(os.environ):
            if name.startswith(("GOOGLE_", "GCLOUD_", "CLOUDSDK_")):
                monkeypatch.delenv(name)
        (tmp_path / "gcloud").mkdir()
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)  # not on GCE: no metadata probe
        return get_secret_store("gcp")  # Google's endpoint: never reached

    def writes(self, secret: str) -> int:
        _, project, _, name = secret.split("/")
        return len(self.stub.secrets[(project, name)])


class AzureHarness(Harness):
    name = "azure"
    creates_on_write = True
    bad_names = [
        "",
        "worker-token",
        "http://vault.example/secrets/x",  # Key Vault is https only
        "https://vault.vault.azure.net/keys/x",
        "https://vault.vault.azure.net/secrets/under_score",
    ]

    def __init__(self, stub: KeyVaultStub) -> None:
        self.stub = stub

    def store(self) -> SecretStore:
        # The default credential: the VM's user-assigned identity (see `vm_identity`).
        return get_secret_store(
            "azure", connection_verify=self.stub.ca_file, verify_challenge_resource=False
        )

    def make_secret(self) -> str:
        return self.stub.secret_url(unique("worker-token"))

    def unknown_secret(self) -> str:
        return self.stub.secret_url(unique("gone"))

    def without_credentials(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SecretStore:
        from azure.core.exceptions import ClientAuthenticationError

        return get_secret_store(
            "azure",
            credential=FixedCredential(error=ClientAuthenticationError("no identity")),
            connection_verify=self.stub.ca_file,
            verify_challenge_resource=False,
        )

    def writes(self, secret: str) -> int:
        return len(self.stub.secrets.get(secret.rsplit("/", 1)[-1], []))


@pytest.fixture(params=["local", "aws", "gcp", "azure"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """Every secret store implementation."""
    if request.param == "local":
        return LocalHarness(tmp_path)
    if request.param == "aws":
        return AWSHarness(request.getfixturevalue("aws_env"))
    if request.param == "gcp":
        return GCPHarness(request.getfixturevalue("secret_manager"))
    request.getfixturevalue("vm_identity")
    return AzureHarness(request.getfixturevalue("key_vault"))


TOKEN = "pgw_12_" + "t" * 43


# --- the contract: every implementation ----------------------------------------------------------


def test_a_secret_terraform_created_reads_as_none(harness: Harness) -> None:
    # Prepare
    secret = harness.make_secret()

    # Execute
    with harness.store() as store:
        value = store.read(secret)

    # Assert
    assert value is None


def test_an_unknown_secret_reads_as_none(harness: Harness) -> None:
    # Execute / Assert
    with harness.store() as store:
        assert store.read(harness.unknown_secret()) is None


def test_the_last_write_is_what_every_reader_sees(harness: Harness) -> None:
    # Prepare
    secret = harness.make_secret()

    # Execute
    with harness.store() as writer:
        writer.write(secret, "pgw_1_first")
        writer.write(secret, TOKEN)
        own = writer.read(secret)
    with harness.store() as reader:  # another process: a Worker
        other = reader.read(secret)

    # Assert
    assert own == other == TOKEN


def test_values_round_trip_exactly(harness: Harness) -> None:
    # Prepare
    secret = harness.make_secret()
    value = "ünïcode, spaces and = signs\nand a second line " + "x" * 5000

    # Execute
    with harness.store() as store:
        store.write(secret, value)
        read = store.read(secret)

    # Assert
    assert read == value


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", ValueError),
        ("x" * (MAX_SECRET_BYTES + 1), ValueError),
        (b"pgw_1_bytes", TypeError),
        (None, TypeError),
    ],
)
def test_bad_values_are_refused_before_any_request(
    harness: Harness, value: Any, error: type[Exception]
) -> None:
    # Prepare
    secret = harness.make_secret()
    before = harness.writes(secret)

    # Execute / Assert
    with harness.store() as store:
        with pytest.raises(error):
            store.write(secret, value)
        assert store.read(secret) is None
    assert harness.writes(secret) == before


def test_bad_names_are_value_errors(harness: Harness) -> None:
    # Execute / Assert
    with harness.store() as store:
        for name in harness.bad_names:
            with pytest.raises(ValueError):
                store.read(name)
            with pytest.raises(ValueError):
                store.write(name, TOKEN)


def test_writing_a_secret_that_does_not_exist(harness: Harness) -> None:
    # Prepare
    secret = harness.unknown_secret()

    # Execute / Assert: created where the store may, else a ProviderError naming the cause
    with harness.store() as store:
        if harness.creates_on_write:
            store.write(secret, TOKEN)
            assert store.read(secret) == TOKEN
        else:
            with pytest.raises(ProviderError):
                store.write(secret, TOKEN)
            assert store.read(secret) is None


def test_missing_credentials_are_reported(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    if harness.name == "local":
        pytest.skip("local files need no credentials")
    secret = harness.make_secret()
    store = harness.without_credentials(monkeypatch, tmp_path)

    # Execute / Assert
    with store:
        with pytest.raises(MissingCredentials):
            store.read(secret)
        with pytest.raises(MissingCredentials):
            store.write(secret, TOKEN)


# --- the registry and each store's own promises --------------------------------------------------


def test_registry_names_each_store_lazily() -> None:
    # Assert
    assert SECRET_STORES == {
        "local": "pygrid.providers.local:LocalSecretStore",
        "aws": "pygrid.providers.aws:AWSSecretStore",
        "gcp": "pygrid.providers.gcp:GCPSecretStore",
        "azure": "pygrid.providers.azure:AzureSecretStore",
    }
    with pytest.raises(ValueError, match="known secret stores: aws, azure, gcp, local"):
        get_secret_store("vault")


def test_local_secrets_are_private_files(tmp_path: Path) -> None:
    # Execute
    LocalSecretStore(tmp_path / "secrets").write("worker-token", TOKEN)

    # Assert
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "secrets" / "worker-token").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["worker-token"]


def test_local_store_defaults_to_pygrid_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv("PYGRID_HOME", str(tmp_path / "home"))

    # Execute
    get_secret_store("local").write("worker-token", TOKEN)

    # Assert
    assert (tmp_path / "home" / "secrets" / "worker-token").read_text() == TOKEN


def test_aws_region_comes_from_the_arn(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    # Prepare: a Worker's environment names no region; the ARN does
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    client = boto3.client("secretsmanager", endpoint_url=aws_env, region_name="eu-west-2")
    arn = client.create_secret(Name=unique("worker-token"))["ARN"]

    # Execute
    with get_secret_store("aws", endpoint_url=aws_env) as store:
        store.write(arn, TOKEN)

    # Assert
    assert client.get_secret_value(SecretId=arn)["SecretString"] == TOKEN


def test_gcp_short_ids_need_a_project(
    secret_manager: SecretManagerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    secret_manager.add_secret(GCP_PROJECT, "worker-token")

    # Execute / Assert
    with get_secret_store("gcp", endpoint_url=secret_manager.url) as store:
        with pytest.raises(MissingCredentials, match="project"):
            store.read("worker-token")
    with get_secret_store("gcp", project=GCP_PROJECT, endpoint_url=secret_manager.url) as store:
        store.write("worker-token", TOKEN)
        assert store.read(f"projects/{GCP_PROJECT}/secrets/worker-token") == TOKEN


def test_gcp_payloads_carry_their_checksum(secret_manager: SecretManagerStub) -> None:
    # Prepare
    secret = secret_manager.add_secret(GCP_PROJECT, "worker-token")

    # Execute
    with get_secret_store("gcp", endpoint_url=secret_manager.url) as store:
        store.write(secret, TOKEN)

    # Assert: the stub refuses a version whose CRC32C does not match (see SecretManagerStub)
    [added] = secret_manager.requests_to("POST", ":addVersion$")
    assert added.body["payload"]["dataCrc32c"]


def test_azure_reads_as_the_user_assigned_identity(
    vm_identity: ImdsStub, key_vault: KeyVaultStub
) -> None:
    # Prepare
    secret = key_vault.secret_url("worker-token")
    store = AzureHarness(key_vault).store()

    # Execute
    with store:
        store.write(secret, TOKEN)

    # Assert: IMDS was asked for AZURE_CLIENT_ID's token; Key Vault got it after its challenge
    assert {r.query.get("client_id") for r in vm_identity.requests} == {AZURE_CLIENT_ID}
    [challenged, *authorised] = key_vault.requests
    assert "Authorization" not in challenged.headers
    assert {r.headers["Authorization"] for r in authorised} == {f"Bearer {key_vault.token}"}


def test_every_azure_default_credential_honours_azure_client_id(vm_identity: ImdsStub) -> None:
    from pygrid.providers.azure import default_credential

    # Execute
    token = default_credential().get_token("https://management.azure.com/.default")

    # Assert
    assert token.token == "vault-token"
    assert vm_identity.requests[-1].query["client_id"] == AZURE_CLIENT_ID


# --- the cloud Workers' token --------------------------------------------------------------------


def node_settings(tmp_path: Path, cloud: str | None, secret: str | None) -> Any:
    from pygrid.config import ServerSettings

    return ServerSettings(
        app="node",
        id="alice",
        port=5000,
        data_dir=tmp_path / "node",
        cloud=cloud,
        worker_token_secret=secret,
    )


@pytest.fixture
def node_db(tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """The session factory of a migrated Node database, as the app has it."""
    from sqlalchemy.orm import sessionmaker

    from pygrid.server.bootstrap import check_data_dir, open_database

    settings = node_settings(tmp_path, None, None)
    check_data_dir(settings)
    engine = open_database(settings)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def live_tokens(sessions: Callable[[], Any]) -> list[tuple[int, str]]:
    from pygrid.data_centric.worker_tokens import live_tokens_named

    with sessions() as session:
        return [(token.id, token.name) for token in live_tokens_named(session, TOKEN_NAME)]


def authenticates(sessions: Callable[[], Any], text: str | None) -> int:
    from pygrid.data_centric.worker_tokens import authenticate

    assert text is not None
    with sessions() as session:
        return authenticate(session, text).id


class FlakyStore(LocalSecretStore):
    """A local store whose first ``failures`` calls fail as a cloud does before IAM settles."""

    def __init__(self, root: Path, failures: int = 0, fail_writes: bool = False) -> None:
        super().__init__(root)
        self.failures = failures
        self.fail_writes = fail_writes
        self.calls = 0

    def read(self, secret: str) -> str | None:
        self.calls += 1
        if self.calls <= self.failures:
            raise MissingCredentials("AccessDenied: not yet")
        return super().read(secret)

    def write(self, secret: str, value: str) -> None:
        if self.fail_writes:
            raise ProviderError("write refused")
        super().write(secret, value)


def test_publish_mints_once_and_is_idempotent(tmp_path: Path, node_db: Callable[[], Any]) -> None:
    # Prepare
    settings = node_settings(tmp_path, "local", "worker-token")
    store = LocalSecretStore(tmp_path / "secrets")

    # Execute
    first = publish_worker_token(settings, node_db, store)
    published = store.read("worker-token")
    again = publish_worker_token(settings, node_db, store)

    # Assert
    assert first is not None and again == first
    assert store.read("worker-token") == published
    assert authenticates(node_db, published) == first
    assert live_tokens(node_db) == [(first, TOKEN_NAME)]


@pytest.mark.parametrize(
    "stale",
    [
        pytest.param("revoked", id="revoked-by-the-owner"),
        pytest.param("foreign", id="another-databases-token"),
        pytest.param("garbage", id="not-a-token"),
    ],
)
def test_publish_replaces_a_token_that_no_longer_authenticates(
    tmp_path: Path, node_db: Callable[[], Any], stale: str
) -> None:
    from pygrid.data_centric import worker_tokens

    # Prepare
    settings = node_settings(tmp_path, "local", "worker-token")
    store = LocalSecretStore(tmp_path / "secrets")
    old_id = publish_worker_token(settings, node_db, store)
    if stale == "revoked":
        with node_db() as session:
            worker_tokens.revoke_as_system(
                session, worker_tokens.live_tokens_named(session, TOKEN_NAME)
            )
    else:
        store.write("worker-token", "pgw_999_" + "x" * 43 if stale == "foreign" else "garbage")

    # Execute
    new_id = publish_worker_token(settings, node_db, store)

    # Assert
    assert new_id != old_id
    assert authenticates(node_db, store.read("worker-token")) == new_id
    assert live_tokens(node_db) == [(new_id, TOKEN_NAME)]  # the old one is revoked


def test_a_failed_write_leaves_no_live_token(tmp_path: Path, node_db: Callable[[], Any]) -> None:
    # Prepare
    settings = node_settings(tmp_path, "local", "worker-token")

    # Execute
    with pytest.raises(ProviderError, match="write refused"):
        publish_worker_token(settings, node_db, FlakyStore(tmp_path / "s", fail_writes=True))

    # Assert
    assert live_tokens(node_db) == []


def test_an_interrupted_publication_is_tidied_up(
    tmp_path: Path, node_db: Callable[[], Any]
) -> None:
    from pygrid.data_centric.worker_tokens import create_system_token

    # Prepare: a token minted by a Node killed before it wrote it
    with node_db() as session:
        orphan, _ = create_system_token(session, TOKEN_NAME)
    settings = node_settings(tmp_path, "local", "worker-token")

    # Execute
    published = publish_worker_token(settings, node_db, LocalSecretStore(tmp_path / "secrets"))

    # Assert
    assert published != orphan.id
    assert live_tokens(node_db) == [(published, TOKEN_NAME)]


@pytest.mark.parametrize(
    ("cloud", "secret", "app"),
    [(None, "worker-token", "node"), ("local", None, "node"), ("local", "worker-token", "network")],
)
def test_only_a_cloud_node_publishes(
    tmp_path: Path, node_db: Callable[[], Any], cloud: str | None, secret: str | None, app: str
) -> None:
    # Prepare
    settings = node_settings(tmp_path, cloud, secret).model_copy(update={"app": app})
    store = FlakyStore(tmp_path / "secrets")

    # Execute
    published = publish_worker_token(settings, node_db, store)
    thread = publish_in_background(settings, node_db, store_factory=lambda: store)

    # Assert
    assert published is None and thread is None and store.calls == 0


def test_publishing_in_the_background_retries_then_rechecks(
    tmp_path: Path, node_db: Callable[[], Any]
) -> None:
    from pygrid.data_centric import worker_tokens

    # Prepare: a store that refuses twice (IAM still propagating)
    settings = node_settings(tmp_path, "local", "worker-token")
    store = FlakyStore(tmp_path / "secrets", failures=2)
    seen = LocalSecretStore(tmp_path / "secrets")
    stop = threading.Event()

    # Execute
    thread = publish_in_background(
        settings,
        node_db,
        recheck_seconds=0.05,
        retry_seconds=[0.01],
        stop=stop,
        store_factory=lambda: store,
    )
    try:
        deadline = time.monotonic() + 20
        while seen.read("worker-token") is None:
            assert time.monotonic() < deadline, "never published"
            time.sleep(0.01)
        first = authenticates(node_db, seen.read("worker-token"))
        # The Owner revokes it: a later pass publishes a new one
        with node_db() as session:
            worker_tokens.revoke_as_system(
                session, worker_tokens.live_tokens_named(session, TOKEN_NAME)
            )
        while [token_id for token_id, _ in live_tokens(node_db)] in ([], [first]):
            assert time.monotonic() < deadline, "never republished"
            time.sleep(0.01)
    finally:
        stop.set()
        assert thread is not None
        thread.join(timeout=10)

    # Assert
    assert not thread.is_alive()
    assert store.calls > 3  # failed twice, then passes every recheck
    assert authenticates(node_db, seen.read("worker-token")) != first


def test_fetch_waits_for_the_node(tmp_path: Path) -> None:
    # Prepare
    store = FlakyStore(tmp_path / "secrets", failures=1)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # the Node publishes while the Worker waits
            LocalSecretStore(tmp_path / "secrets").write("worker-token", f" {TOKEN}\n")

    # Execute
    token = fetch_worker_token("local", "worker-token", store=store, sleep=sleep)

    # Assert: an error, then "empty" twice, each retried with a growing wait
    assert token == TOKEN
    assert sleeps == [1.0, 2.0, 5.0]


def test_fetch_gives_up_after_its_timeout_with_the_reason(tmp_path: Path) -> None:
    # Prepare
    now = [0.0]
    store = LocalSecretStore(tmp_path / "secrets")
    store.write("worker-token", "not a token")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # Execute / Assert
    with pytest.raises(TimeoutError, match="after 10 s: it holds no worker token"):
        fetch_worker_token(
            "local", "worker-token", timeout=10, store=store, clock=lambda: now[0], sleep=sleep
        )
    assert now[0] <= 10


def test_fetch_refuses_a_malformed_secret_name_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid local secret name"):
        fetch_worker_token("local", "../x", store=LocalSecretStore(tmp_path), sleep=pytest.fail)


def test_a_node_publishes_and_a_worker_reads_on_every_cloud(
    harness: Harness, tmp_path: Path, node_db: Callable[[], Any]
) -> None:
    # Prepare: the secret Terraform made, named as the module passes it to both VMs
    secret = harness.make_secret()
    settings = node_settings(tmp_path, harness.name, secret)

    # Execute
    with harness.store() as node_side:
        published = publish_worker_token(settings, node_db, node_side)
    with harness.store() as worker_side:
        token = fetch_worker_token(harness.name, secret, timeout=5, store=worker_side)

    # Assert
    assert authenticates(node_db, token) == published


def test_the_call_the_node_makes_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pygrid.apps.node import create_app
    from pygrid.config import ServerSettings

    # Prepare: a Node configured as the cloud module configures it (the local store stands in)
    monkeypatch.setenv("PYGRID_HOME", str(tmp_path / "home"))
    settings = ServerSettings(
        app="node",
        id="alice",
        port=5000,
        data_dir=tmp_path / "node",
        scheduler_interval=0,
        cloud="local",
        worker_token_secret="worker-token",
    )
    app = create_app(settings)
    stop = threading.Event()

    # Execute: what apps/node/__init__.py `_setup` runs
    thread = publish_in_background(
        app.config["PYGRID_SETTINGS"], app.extensions["pygrid.db"].sessions, stop=stop
    )
    try:
        deadline = time.monotonic() + 20
        while (token := get_secret_store("local").read("worker-token")) is None:
            assert time.monotonic() < deadline, "never published"
            time.sleep(0.02)
    finally:
        stop.set()
        assert thread is not None
        thread.join(timeout=10)

    # Assert
    assert authenticates(app.extensions["pygrid.db"].sessions, token)
    app.extensions["pygrid.db"].engine.dispose()


# --- `pygrid worker --token-from-secret` ---------------------------------------------------------


def test_a_cloud_worker_waits_for_its_token_then_serves_its_node(tmp_path: Path) -> None:
    from sqlalchemy.orm import sessionmaker

    from pygrid.data_centric.worker_tokens import list_tokens
    from pygrid.server.bootstrap import open_database

    # Prepare: a Node, and a Worker started first that finds the secret empty
    home = tmp_path / "home"
    port = free_port()
    env = {"PYGRID_HOME": str(home), "PYGRID_OWNER_PASSWORD": "correct horse battery staple"}
    args = ["node", "--port", str(port), "--id", "alice", "--data-dir", str(tmp_path / "node")]
    log = tmp_path / "worker.log"
    with running(args, port, tmp_path / "node.log", env=env) as node, log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pygrid.cli",
                "worker",
                "--node",
                node.url,
                "--poll-wait",
                "1",
                "--label",
                "cloud-w1",
                "--work-dir",
                str(tmp_path / "jobs"),
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # What the module writes into /etc/pygrid/worker.env
            env={
                **os.environ,
                "PYGRID_HOME": str(home),
                "PYGRID_CLOUD": "local",
                "PYGRID_WORKER_TOKEN_SECRET": "worker-token",
            },
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while "waiting for the worker token" not in log.read_text():
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)

            # Execute: the Node publishes (what its start does in a cloud deployment)
            settings = node_settings(tmp_path, "local", "worker-token")
            engine = open_database(settings)
            sessions = sessionmaker(engine, expire_on_commit=False)
            published = publish_worker_token(settings, sessions, LocalSecretStore(home / "secrets"))
            while True:
                with sessions() as session:
                    seen = {t.id: t.last_label for t in list_tokens(session)}
                if seen.get(published) == "cloud-w1":
                    break
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            engine.dispose()
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
            code = worker.wait(timeout=30)

    # Assert: it served until stopped, and the token never reached its command line or log
    output = log.read_text()
    assert code == 0, output
    assert "reading the worker token from worker-token (local)" in output
    token = LocalSecretStore(home / "secrets").read("worker-token")
    assert token and token not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-from-secret", "worker-token"], "needs --cloud"),
        (["--token-from-secret", "worker-token", "--token", TOKEN], "not both"),
        ([], "give --token"),
        (
            ["--token-from-secret", "worker-token", "--cloud", "local", "--secret-timeout", "0.5"],
            "no worker token in secret worker-token after 0.5 s: it is empty",
        ),
    ],
)
def test_worker_token_options_fail_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # Execute
    env = {"PYGRID_HOME": str(tmp_path)}
    for name in ("PYGRID_WORKER_TOKEN", "PYGRID_WORKER_TOKEN_SECRET", "PYGRID_CLOUD"):
        env[name] = ""
    result = run_cli(["worker", "--node", "http://127.0.0.1:9", *args], env=env, timeout=60)

    # Assert
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr
