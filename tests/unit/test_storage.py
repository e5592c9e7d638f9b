"""One contract suite for every blob store (STYLE.md rule 6), then each store's own promises.

The ``store`` fixture runs each contract test against the local reference store and, through
the real client libraries against stand-ins on 127.0.0.1 (marked ``cloud``), against:

- `S3BlobStore`: boto3 and a moto server process;
- `GCSBlobStore`: google-cloud-storage and `GcsStub` (the JSON API, uploads and downloads);
- `AzureBlobStore`: azure-storage-blob and Azurite (npm) over https, signed in as a VM is: a
  user-assigned managed identity (``AZURE_CLIENT_ID``) whose token an `ImdsStub` hands out.
  Skipped where node or Azurite is missing (scripts/setup.sh installs them).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pygrid
from pygrid.storage import (
    STORES,
    BlobNotFound,
    BlobStore,
    InvalidBlobKey,
    StoreUnavailable,
    open_store,
)
from pygrid.storage.local import LocalBlobStore
from tests.support import azurite as azurite_support
from tests.support.cloud_stubs import GcsStub, ImdsStub
from tests.support.moto import FAKE_AWS_ENV, HOST, moto_server

MB = 1024 * 1024
REGION = "us-east-1"
#: The client id of the app VM's user-assigned identity, as the Azure module writes it.
AZURE_CLIENT_ID = "5b0c4d2e-6f1a-4b3c-9d8e-7f6a5b4c3d2e"
CLOUD_STORES = ["s3", "gcs", "azure"]


# --- helpers -------------------------------------------------------------------------------------


class SocketLikeStream(io.BytesIO):
    """A binary stream that answers like a socket: short reads; records every read; may fail."""

    def __init__(self, data: bytes, max_read: int = 64 * 1024, fail_at: int | None = None):
        super().__init__(data)
        self.max_read = max_read
        self.fail_at = fail_at
        self.read_sizes: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.read_sizes.append(size)
        if self.fail_at is not None and self.tell() >= self.fail_at:
            raise ConnectionResetError("client went away mid-upload")
        wanted = self.max_read if size is None or size < 0 else min(size, self.max_read)
        if self.fail_at is not None:
            wanted = min(wanted, self.fail_at - self.tell())
        return super().read(wanted)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto server process for the whole session, stopped by PID at the end."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_endpoint: str) -> str:
    """Fake credentials and the moto endpoint in the environment; nothing goes past 127.0.0.1."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_REGION", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", HOST)
    monkeypatch.setenv("PYGRID_S3_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def s3_client(aws_env: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=aws_env, region_name=REGION)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh bucket per test, so tests never see each other's blobs."""
    name = f"pygrid-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def gcs_stub() -> Iterator[GcsStub]:
    """One GCS stand-in for the whole session; each test gets its own bucket in it."""
    with GcsStub() as stub:
        yield stub


@pytest.fixture
def gcs_env(monkeypatch: pytest.MonkeyPatch, gcs_stub: GcsStub) -> GcsStub:
    """The stub's endpoint in the environment, as PYGRID_GCS_ENDPOINT_URL; nothing leaves 127.0.0.1."""
    offline(monkeypatch)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("PYGRID_GCS_ENDPOINT_URL", gcs_stub.url)
    return gcs_stub


@pytest.fixture
def gcs_bucket(gcs_env: GcsStub) -> str:
    return gcs_env.add_bucket(f"pygrid-test-{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def azurite() -> Iterator[azurite_support.Azurite]:
    """One Azurite process (https, OAuth) for the whole session, stopped by PID at the end."""
    reason = azurite_support.missing()
    if reason is not None:
        pytest.skip(reason)
    with azurite_support.azurite_blob() as server:
        yield server


@pytest.fixture(scope="session")
def imds() -> Iterator[ImdsStub]:
    """The metadata service of a VM with one user-assigned identity (AZURE_CLIENT_ID's)."""
    with ImdsStub({AZURE_CLIENT_ID: azurite_support.managed_identity_token()}) as stub:
        yield stub


@pytest.fixture
def azure_env(
    monkeypatch: pytest.MonkeyPatch, azurite: azurite_support.Azurite, imds: ImdsStub
) -> azurite_support.Azurite:
    """What the app VM's environment holds, with Azurite for the account and the IMDS stub."""
    offline(monkeypatch)
    for name in list(os.environ):
        if name.startswith(("AZURE_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_CLIENT_ID", AZURE_CLIENT_ID)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", azurite.ca_file)
    monkeypatch.setenv("PYGRID_AZURE_BLOB_ENDPOINT_URL", azurite.url)
    return azurite


@pytest.fixture
def azure_container(azure_env: azurite_support.Azurite) -> str:
    """A fresh container, made with the account key (the VM's identity only uses it)."""
    from azure.storage.blob import BlobServiceClient

    name = f"pygrid-test-{uuid.uuid4().hex[:16]}"
    with BlobServiceClient.from_connection_string(azure_env.connection_string) as service:
        service.create_container(name)
    return name


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", HOST)


def cloud_store(request: pytest.FixtureRequest, kind: str, missing: bool = False) -> BlobStore:
    """A cloud store on a fresh bucket (container), or on one that does not exist."""
    gone = f"missing-{uuid.uuid4().hex[:16]}"
    if kind == "s3":
        from pygrid.storage.s3 import S3BlobStore

        endpoint = request.getfixturevalue("aws_env")
        bucket = gone if missing else request.getfixturevalue("s3_bucket")
        return S3BlobStore(bucket, endpoint_url=endpoint, region=REGION)
    if kind == "gcs":
        from pygrid.storage.gcs import GCSBlobStore

        request.getfixturevalue("gcs_env")
        return GCSBlobStore(gone if missing else request.getfixturevalue("gcs_bucket"))
    from pygrid.storage.azure_blob import AzureBlobStore

    request.getfixturevalue("azure_env")
    container = gone if missing else request.getfixturevalue("azure_container")
    return AzureBlobStore(azurite_support.ACCOUNT, container)


@pytest.fixture(
    params=["local", *(pytest.param(kind, marks=pytest.mark.cloud) for kind in CLOUD_STORES)]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Every blob store implementation, empty."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return cloud_store(request, request.param)


@pytest.fixture(
    params=["local", *(pytest.param(kind, marks=pytest.mark.cloud) for kind in CLOUD_STORES)]
)
def unavailable_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Every implementation, pointed at storage that is gone."""
    if request.param == "local":
        local = LocalBlobStore(tmp_path / "blobs")
        shutil.rmtree(local.root)  # the volume was unmounted under the running Node
        return local
    return cloud_store(request, request.param, missing=True)


# --- the contract: every implementation ----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"model weights", id="bytes"),
        pytest.param(bytearray(b"\x00\xff" * 1000), id="bytearray"),
        pytest.param(memoryview(b"a diff"), id="memoryview"),
    ],
)
def test_put_then_get_round_trips_bytes(store: BlobStore, data: bytes) -> None:
    # Execute
    written = store.put("models/7/checkpoints/1", data)

    # Assert
    assert written == len(bytes(data))
    assert store.get("models/7/checkpoints/1") == bytes(data)
    assert store.size("models/7/checkpoints/1") == len(bytes(data))
    assert store.exists("models/7/checkpoints/1")


@pytest.mark.parametrize("length", [0, 5 * MB], ids=["empty", "5MB"])
def test_put_streams_in_bounded_reads(store: BlobStore, length: int) -> None:
    # Prepare
    data = payload(length)
    stream = SocketLikeStream(data)

    # Execute
    written = store.put("datasets/mnist/train.safetensors", stream)

    # Assert
    assert written == length
    assert store.size("datasets/mnist/train.safetensors") == length
    assert store.get("datasets/mnist/train.safetensors") == data
    assert stream.read_sizes, "the stream was never read"
    unbounded = [size for size in stream.read_sizes if size is None or size <= 0]
    assert unbounded == [], "a stream must never be read whole into memory"
    assert max(s for s in stream.read_sizes if s is not None) <= 16 * MB


def test_open_streams_the_blob_in_chunks(store: BlobStore) -> None:
    # Prepare
    data = payload(3 * MB + 17, seed=1)
    store.put("datasets/big.bin", data)
    digest = hashlib.sha256()
    chunk_sizes = []

    # Execute
    with store.open("datasets/big.bin") as reader:
        while chunk := reader.read(256 * 1024):
            chunk_sizes.append(len(chunk))
            digest.update(chunk)

    # Assert
    assert sum(chunk_sizes) == len(data)
    assert max(chunk_sizes) <= 256 * 1024
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_open_reader_keeps_the_version_it_opened(store: BlobStore) -> None:
    # Prepare
    store.put("models/7/latest", b"version 1")
    reader = store.open("models/7/latest")

    # Execute
    store.put("models/7/latest", b"version 2, longer")
    with reader:
        seen = reader.read()

    # Assert
    assert seen == b"version 1"
    assert store.get("models/7/latest") == b"version 2, longer"


def test_put_overwrites_the_whole_blob(store: BlobStore) -> None:
    # Prepare
    store.put("models/7/latest", b"a much longer first version")

    # Execute
    written = store.put("models/7/latest", io.BytesIO(b"short"))

    # Assert
    assert written == 5
    assert store.get("models/7/latest") == b"short"
    assert store.size("models/7/latest") == 5
    assert store.list() == ["models/7/latest"]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ["datasets/a.csv", "models/7/1", "models/7/latest", "models/71/1", "models/8/1", "z"]),
        ("models/7/", ["models/7/1", "models/7/latest"]),
        ("models/7", ["models/7/1", "models/7/latest", "models/71/1"]),
        ("models/7/l", ["models/7/latest"]),
        ("d", ["datasets/a.csv"]),
        ("z", ["z"]),
        ("nothing/", []),
        ("models/7/latest/", []),
    ],
)
def test_list_matches_the_prefix_sorted(store: BlobStore, prefix: str, expected: list[str]) -> None:
    # Prepare: stored out of order, and one blob gone again
    for key in ["z", "models/8/1", "models/7/latest", "datasets/a.csv", "models/71/1"]:
        store.put(key, key.encode())
    store.put("models/7/1", b"1")
    store.put("models/7/gone", b"x")
    store.delete("models/7/gone")

    # Execute
    keys = store.list(prefix)

    # Assert
    assert keys == expected


def test_delete_is_idempotent(store: BlobStore) -> None:
    # Prepare
    store.put("diffs/cycle-3/worker-1", b"diff")
    store.put("diffs/cycle-3/worker-2", b"other diff")

    # Execute
    store.delete("diffs/cycle-3/worker-1")
    store.delete("diffs/cycle-3/worker-1")
    store.delete("never/stored")

    # Assert
    assert not store.exists("diffs/cycle-3/worker-1")
    assert store.list() == ["diffs/cycle-3/worker-2"]
    assert store.get("diffs/cycle-3/worker-2") == b"other diff"


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda store, key: store.get(key), id="get"),
        pytest.param(lambda store, key: store.open(key), id="open"),
        pytest.param(lambda store, key: store.size(key), id="size"),
    ],
)
def test_missing_key_raises_blob_not_found(
    store: BlobStore, read: Callable[[BlobStore, str], Any]
) -> None:
    # Prepare: a blob under a longer key makes "models/7" a folder-like prefix, not a blob
    store.put("models/7/latest", b"x")

    # Execute / Assert
    for key in ["models/8", "models/7", "models/7/latest/more"]:
        with pytest.raises(BlobNotFound) as caught:
            read(store, key)
        assert isinstance(caught.value, KeyError)
        assert caught.value.args == (key,)
        assert not store.exists(key)


BAD_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("..", id="parent"),
    pytest.param("models/../../etc/passwd", id="parent-inside"),
    pytest.param("./model", id="dot-segment"),
    pytest.param("models/./model", id="dot-segment-inside"),
    pytest.param("models//model", id="empty-segment"),
    pytest.param("models/", id="trailing-slash"),
    pytest.param("models\\..\\secret", id="backslash"),
    pytest.param("model\x00.bin", id="nul"),
    pytest.param("model\n.bin", id="newline"),
    pytest.param("k" * 1025, id="over-1024-chars"),
    pytest.param("/".join(["é" * 100] * 6), id="over-1024-utf8-bytes"),
    pytest.param("s" * 256, id="segment-over-255-bytes"),
    pytest.param("models/.pygrid-tmp-x1y2", id="reserved-segment"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param(b"models/7", id="not-a-str"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_rejected_by_every_method(store: BlobStore, key: Any) -> None:
    # Prepare
    calls = {
        "put": lambda: store.put(key, b"data"),
        "put-stream": lambda: store.put(key, io.BytesIO(b"data")),
        "get": lambda: store.get(key),
        "open": lambda: store.open(key),
        "exists": lambda: store.exists(key),
        "size": lambda: store.size(key),
        "delete": lambda: store.delete(key),
    }

    # Execute / Assert
    for name, call in calls.items():
        with pytest.raises(InvalidBlobKey) as caught:
            call()
        assert isinstance(caught.value, ValueError), name
    assert store.list() == []


@pytest.mark.parametrize(
    "prefix", ["/models", "../", "models//", "models/../x", "models\\", "m\x00", ".pygrid-tmp-x/"]
)
def test_bad_list_prefixes_are_rejected(store: BlobStore, prefix: str) -> None:
    # Execute / Assert
    with pytest.raises(InvalidBlobKey):
        store.list(prefix)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(".hidden", id="dotfile"),
        pytest.param("..not-the-parent", id="leading-dots"),
        pytest.param("with space/ümlaut-ñ/日本.bin", id="unicode-and-space"),
        pytest.param("/".join(["s" * 255] * 3 + ["s" * 254, "s"]), id="exactly-1024-bytes"),
    ],
)
def test_unusual_valid_keys_round_trip(store: BlobStore, key: str) -> None:
    # Execute
    store.put(key, b"content")

    # Assert
    assert store.get(key) == b"content"
    assert store.list() == [key]


def test_readers_never_see_a_partial_overwrite(store: BlobStore) -> None:
    # Prepare: two versions that differ in every byte, so any mix of them is detected
    versions = [b"a" * 512 * 1024, b"b" * 256 * 1024]
    store.put("models/7/latest", versions[0])
    seen: list[bytes] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            seen.append(store.get("models/7/latest"))

    reader = threading.Thread(target=read_until_done)

    # Execute
    reader.start()
    try:
        for round_ in range(20):
            store.put("models/7/latest", io.BytesIO(versions[round_ % 2]))
    finally:
        done.set()
        reader.join(timeout=30)

    # Assert
    assert not reader.is_alive()
    assert seen, "the reader never read"
    assert all(content in versions for content in seen)


@pytest.mark.parametrize("had_old_version", [True, False], ids=["overwrite", "new-key"])
def test_failed_stream_put_keeps_the_old_blob(store: BlobStore, had_old_version: bool) -> None:
    # Prepare: big enough for a multipart upload on S3, failing in its second part
    if had_old_version:
        store.put("datasets/upload.csv", b"old, complete content")
    stream = SocketLikeStream(payload(10 * MB), max_read=MB, fail_at=9 * MB)

    # Execute
    with pytest.raises(ConnectionResetError):
        store.put("datasets/upload.csv", stream)

    # Assert
    if had_old_version:
        assert store.get("datasets/upload.csv") == b"old, complete content"
        assert store.list() == ["datasets/upload.csv"]
    else:
        assert not store.exists("datasets/upload.csv")
        assert store.list() == []


def test_put_rejects_text(store: BlobStore) -> None:
    # Execute / Assert
    with pytest.raises(TypeError):
        store.put("notes.txt", io.StringIO("text is not bytes"))  # type: ignore[arg-type]
    assert store.list() == []


def test_check_passes_and_leaves_nothing_behind(store: BlobStore) -> None:
    # Prepare
    store.put("models/1", b"x")

    # Execute
    store.check()

    # Assert
    assert store.list() == ["models/1"]


def test_check_raises_store_unavailable(unavailable_store: BlobStore) -> None:
    # Execute / Assert
    with pytest.raises(StoreUnavailable) as caught:
        unavailable_store.check()
    assert caught.value.__cause__ is not None
    assert unavailable_store.url in str(caught.value)


def test_url_reopens_the_same_store(store: BlobStore) -> None:
    # Prepare
    reopened = open_store(store.url)

    # Execute
    store.put("plans/training.pt", b"plan")

    # Assert
    assert type(reopened) is type(store)
    assert reopened.url == store.url
    assert reopened.get("plans/training.pt") == b"plan"


# --- the registry --------------------------------------------------------------------------------


def test_registry_names_each_store_lazily() -> None:
    # Assert
    assert STORES == {
        "file": "pygrid.storage.local:LocalBlobStore",
        "s3": "pygrid.storage.s3:S3BlobStore",
        "gs": "pygrid.storage.gcs:GCSBlobStore",
        "az": "pygrid.storage.azure_blob:AzureBlobStore",
    }


def test_open_store_rejects_unknown_schemes() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"'hdfs'.*az, file, gs, s3"):
        open_store("hdfs://cluster/prefix")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file://otherhost/srv/blobs", id="file-url-with-host"),
        pytest.param("file:///srv/blobs?mode=fast", id="file-url-with-query"),
        pytest.param("s3://", id="s3-without-bucket"),
        pytest.param("s3://bucket/prefix#part", id="s3-with-fragment"),
        pytest.param("s3://bucket/../escape", id="s3-bad-prefix"),
        pytest.param("gs://", id="gs-without-bucket"),
        pytest.param("gs://bucket/prefix?x=1", id="gs-with-query"),
        pytest.param("gs://bucket/a//b", id="gs-bad-prefix"),
        pytest.param("az://account", id="az-without-container"),
        pytest.param("az://Account/blobs", id="az-bad-account"),
        pytest.param("az://account/b", id="az-bad-container"),
        pytest.param("az://account/blobs#part", id="az-with-fragment"),
        pytest.param("az://account/blobs/../escape", id="az-bad-prefix"),
    ],
)
def test_open_store_rejects_malformed_urls(url: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError):
        open_store(url)


def test_open_store_rejects_endpoint_for_local_stores(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="s3"):
        open_store(tmp_path, endpoint_url="http://127.0.0.1:9")
    assert not any(tmp_path.iterdir())


def test_opening_a_local_store_imports_no_cloud_sdk(tmp_path: Path) -> None:
    # Prepare: a fresh interpreter, since this one may have imported the SDKs already
    src = Path(pygrid.__file__).resolve().parents[1]
    sdks = ("boto3", "botocore", "google", "azure")
    code = (
        "import sys; from pygrid.storage import open_store; "
        f"s = open_store({str(tmp_path / 'blobs')!r}); s.put('k', b'v'); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sdks!r}))"
    )

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )

    # Assert
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "blobs" / "k").read_bytes() == b"v"


# --- the local store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "as_url",
    [
        pytest.param(lambda path: str(path), id="str-path"),
        pytest.param(lambda path: path, id="pathlike"),
        pytest.param(lambda path: path.as_uri(), id="file-url"),
        pytest.param(lambda path: "file://localhost" + str(path), id="file-url-localhost"),
    ],
)
def test_open_store_opens_local_paths(tmp_path: Path, as_url: Callable[[Path], Any]) -> None:
    # Execute
    store = open_store(as_url(tmp_path / "blob store"))

    # Assert
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "blob store"
    assert store.root.is_dir()


def test_local_interrupted_put_leaves_no_temp_file(tmp_path: Path) -> None:
    # Prepare
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("datasets/upload.csv", b"old")
    stream = SocketLikeStream(payload(4 * MB), fail_at=2 * MB)

    # Execute
    with pytest.raises(ConnectionResetError):
        store.put("datasets/upload.csv", stream)

    # Assert
    assert files_under(store.root) == ["datasets/upload.csv"]
    assert store.get("datasets/upload.csv") == b"old"


def test_local_temp_files_of_killed_writers_are_never_listed(tmp_path: Path) -> None:
    # Prepare: what a process killed mid-put leaves behind
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("models/7/latest", b"x")
    (store.root / "models" / "7" / ".pygrid-tmp-k1ll3d").write_bytes(b"partial")
    (store.root / ".pygrid-tmp-root").write_bytes(b"partial")

    # Execute
    everything, below = store.list(), store.list("models/7/")

    # Assert
    assert everything == ["models/7/latest"]
    assert below == ["models/7/latest"]


def test_local_root_folders_and_files_are_private(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "new" / "blobs"

    # Execute
    store = LocalBlobStore(root)
    store.put("datasets/alice/private.csv", b"age,income\n")
    store.put("datasets/alice/stream.csv", io.BytesIO(b"age,income\n"))

    # Assert
    for path in [root, root / "datasets", root / "datasets" / "alice"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (root / "datasets" / "alice").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_local_key_clashing_with_a_folder_is_rejected(tmp_path: Path) -> None:
    # Prepare
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("models/7", b"blob")
    store.put("plans/1/train", b"plan")

    # Execute / Assert
    with pytest.raises(InvalidBlobKey, match="'models/7'"):
        store.put("models/7/latest", b"x")
    with pytest.raises(InvalidBlobKey, match="'plans/1/'"):
        store.put("plans/1", b"x")
    assert files_under(store.root) == ["models/7", "plans/1/train"]


def test_local_delete_prunes_emptied_folders(tmp_path: Path) -> None:
    # Prepare
    store = LocalBlobStore(tmp_path / "blobs")
    store.put("diffs/cycle-1/worker-1", b"x")
    store.put("diffs/keep", b"y")

    # Execute
    store.delete("diffs/cycle-1/worker-1")
    store.put("diffs/cycle-1", b"the name is free again")

    # Assert
    assert files_under(store.root) == ["diffs/cycle-1", "diffs/keep"]
    assert store.root.is_dir()


def test_local_check_leaves_no_probe(tmp_path: Path) -> None:
    # Prepare
    store = LocalBlobStore(tmp_path / "blobs")

    # Execute
    store.check()

    # Assert
    assert list(store.root.iterdir()) == []


# --- the S3 store --------------------------------------------------------------------------------


@pytest.mark.cloud
def test_s3_objects_land_under_the_prefix_encrypted(s3_client: Any, s3_bucket: str) -> None:
    # Prepare
    store = open_store(f"s3://{s3_bucket}/grid1/alice")

    # Execute
    store.put("models/1", b"bytes")
    store.put("models/2", io.BytesIO(b"stream"))

    # Assert
    assert store.url == f"s3://{s3_bucket}/grid1/alice"
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == [
        "grid1/alice/models/1",
        "grid1/alice/models/2",
    ]
    for key in ["grid1/alice/models/1", "grid1/alice/models/2"]:
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"


@pytest.mark.cloud
def test_s3_prefixes_isolate_stores_sharing_a_bucket(aws_env: str, s3_bucket: str) -> None:
    # Prepare
    alice = open_store(f"s3://{s3_bucket}/alice", endpoint_url=aws_env)
    alice_2 = open_store(f"s3://{s3_bucket}/alice-2", endpoint_url=aws_env)

    # Execute
    alice.put("k", b"alice")
    alice_2.put("k", b"alice-2")
    alice_2.delete("k")

    # Assert
    assert alice.list() == ["k"]
    assert alice.get("k") == b"alice"
    assert alice_2.list() == []


@pytest.mark.cloud
def test_s3_list_follows_pages(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    from pygrid.storage import s3

    monkeypatch.setattr(s3, "LIST_PAGE_SIZE", 2)
    store = open_store(f"s3://{s3_bucket}")
    keys = [f"diffs/{n:02d}" for n in range(7)]
    for key in reversed(keys):
        store.put(key, b"d")

    # Execute
    listed = store.list("diffs/")

    # Assert
    assert listed == keys


@pytest.mark.cloud
def test_s3_failed_upload_leaves_no_multipart_upload(s3_client: Any, s3_bucket: str) -> None:
    # Prepare
    store = open_store(f"s3://{s3_bucket}")
    stream = SocketLikeStream(payload(10 * MB), max_read=MB, fail_at=9 * MB)

    # Execute
    with pytest.raises(ConnectionResetError):
        store.put("datasets/big.csv", stream)

    # Assert
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []


@pytest.mark.cloud
def test_s3_key_too_long_with_the_prefix_is_rejected(aws_env: str, s3_bucket: str) -> None:
    # Prepare
    store = open_store(f"s3://{s3_bucket}/grid1")
    key = "/".join(["s" * 255] * 3 + ["s" * 254, "s"])  # 1024 bytes: valid on its own

    # Execute / Assert
    with pytest.raises(InvalidBlobKey, match="prefix"):
        store.put(key, b"x")
    assert store.list() == []


@pytest.mark.cloud
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-3"),
        ({"AWS_REGION": "ap-south-1"}, "ap-south-1"),
        ({"AWS_DEFAULT_REGION": "eu-west-3", "AWS_REGION": "ap-south-1"}, "eu-west-3"),
    ],
)
def test_s3_region_comes_from_the_environment(
    aws_env: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    # Prepare
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # Execute
    store = open_store("s3://bucket")

    # Assert
    assert store.client.meta.region_name == expected  # type: ignore[attr-defined]
    assert store.client.meta.endpoint_url == aws_env  # type: ignore[attr-defined]


# --- the GCS store -------------------------------------------------------------------------------


@pytest.mark.cloud
def test_gcs_objects_land_under_the_prefix(gcs_env: GcsStub, gcs_bucket: str) -> None:
    # Prepare
    store = open_store(f"gs://{gcs_bucket}/grid1/alice")

    # Execute
    store.put("models/1", b"bytes")
    store.put("models/2", io.BytesIO(b"stream"))

    # Assert
    assert store.url == f"gs://{gcs_bucket}/grid1/alice"
    assert gcs_env.objects(gcs_bucket) == {
        "grid1/alice/models/1": b"bytes",
        "grid1/alice/models/2": b"stream",
    }


@pytest.mark.cloud
def test_gcs_large_stream_is_a_resumable_upload_in_bounded_chunks(
    gcs_env: GcsStub, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 256 KiB chunks (GCS's smallest), so a 1 MiB stream takes five requests
    from pygrid.storage import gcs

    monkeypatch.setattr(gcs, "CHUNK_SIZE", 256 * 1024)
    store = open_store(f"gs://{gcs_bucket}")
    data = payload(MB + 5)
    before = len(gcs_env.requests)

    # Execute
    written = store.put("datasets/big.bin", SocketLikeStream(data, max_read=1000))

    # Assert
    uploads = [r for r in gcs_env.requests[before:] if r.path.startswith("/upload/")]
    assert written == len(data)
    assert [(r.method, r.query.get("uploadType")) for r in uploads] == [
        ("POST", "resumable"),
        *[("PUT", "resumable")] * 5,
    ]
    assert gcs_env.objects(gcs_bucket) == {"datasets/big.bin": data}


@pytest.mark.cloud
def test_gcs_failed_upload_leaves_an_unfinished_session_only(
    gcs_env: GcsStub, gcs_bucket: str
) -> None:
    # Prepare
    store = open_store(f"gs://{gcs_bucket}")
    stream = SocketLikeStream(payload(10 * MB), max_read=MB, fail_at=9 * MB)

    # Execute
    with pytest.raises(ConnectionResetError):
        store.put("datasets/big.csv", stream)

    # Assert
    assert gcs_env.objects(gcs_bucket) == {}
    assert [u.name for u in gcs_env.uploads.values() if u.bucket == gcs_bucket] == [
        "datasets/big.csv"
    ]


@pytest.mark.cloud
def test_gcs_reader_keeps_its_generation_across_ranged_reads(
    gcs_env: GcsStub, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: four ranged reads, the blob overwritten after the first
    from pygrid.storage import gcs

    monkeypatch.setattr(gcs, "READ_CHUNK_SIZE", 256 * 1024)
    store = open_store(f"gs://{gcs_bucket}")
    old = payload(MB, seed=1)
    store.put("models/7/latest", old)

    # Execute
    with store.open("models/7/latest") as reader:
        first = reader.read(256 * 1024)
        store.put("models/7/latest", payload(MB, seed=2))
        rest = b"".join(iter(lambda: reader.read(256 * 1024), b""))

    # Assert
    assert first + rest == old
    ranged = gcs_env.requests_to("GET", "/download/")[-4:]
    assert len({r.query.get("generation") for r in ranged}) == 1


@pytest.mark.cloud
def test_gcs_list_follows_pages(
    gcs_env: GcsStub, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(gcs_env, "page_size", 2)
    store = open_store(f"gs://{gcs_bucket}")
    keys = [f"diffs/{n:02d}" for n in range(7)]
    for key in reversed(keys):
        store.put(key, b"d")

    # Execute
    listed = store.list("diffs/")

    # Assert
    assert listed == keys
    assert len(gcs_env.requests_to("GET", f"/storage/v1/b/{gcs_bucket}/o$")) == 4


@pytest.mark.cloud
def test_gcs_check_names_a_missing_permission(
    gcs_env: GcsStub, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an identity that may read but not delete
    monkeypatch.setattr(gcs_env, "denied_permissions", {"storage.objects.delete"})
    store = open_store(f"gs://{gcs_bucket}")

    # Execute / Assert
    with pytest.raises(StoreUnavailable, match=r"lacks storage\.objects\.delete"):
        store.check()


@pytest.mark.cloud
def test_gcs_endpoint_can_be_given_to_open_store(
    gcs_env: GcsStub, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.delenv("PYGRID_GCS_ENDPOINT_URL")

    # Execute
    store = open_store(f"gs://{gcs_bucket}/p", endpoint_url=gcs_env.url)
    store.put("k", b"v")

    # Assert
    assert gcs_env.objects(gcs_bucket) == {"p/k": b"v"}


# --- the Azure Blob store ------------------------------------------------------------------------


@pytest.mark.cloud
def test_azure_blobs_land_under_the_prefix(
    azure_env: azurite_support.Azurite, azure_container: str
) -> None:
    from azure.storage.blob import ContainerClient

    # Prepare
    url = f"az://{azurite_support.ACCOUNT}/{azure_container}/grid1/alice"
    store = open_store(url)

    # Execute
    store.put("models/1", b"bytes")
    store.put("models/2", io.BytesIO(b"stream"))

    # Assert
    assert store.url == url
    with ContainerClient.from_connection_string(
        azure_env.connection_string, azure_container
    ) as container:
        blobs = {blob.name: blob.content_settings.content_type for blob in container.list_blobs()}
    assert blobs == {
        "grid1/alice/models/1": "application/octet-stream",
        "grid1/alice/models/2": "application/octet-stream",
    }


@pytest.mark.cloud
def test_azure_large_stream_is_one_commit_of_staged_blocks(
    azure_env: azurite_support.Azurite, azure_container: str
) -> None:
    from azure.storage.blob import BlobClient

    # Prepare
    store = open_store(f"az://{azurite_support.ACCOUNT}/{azure_container}")
    data = payload(10 * MB)

    # Execute
    written = store.put("datasets/big.bin", SocketLikeStream(data, max_read=MB))

    # Assert
    with BlobClient.from_connection_string(
        azure_env.connection_string, azure_container, "datasets/big.bin"
    ) as blob:
        committed, uncommitted = blob.get_block_list("all")
    assert written == len(data) and store.get("datasets/big.bin") == data
    assert [block.size for block in committed] == [4 * MB, 4 * MB, 2 * MB]
    assert uncommitted == []


@pytest.mark.cloud
def test_azure_signs_in_as_the_user_assigned_identity(
    azure_env: azurite_support.Azurite, azure_container: str, imds: ImdsStub
) -> None:
    # Prepare
    store = open_store(f"az://{azurite_support.ACCOUNT}/{azure_container}")
    before = len(imds.requests)

    # Execute
    store.check()

    # Assert: IMDS was asked for AZURE_CLIENT_ID's token (a VM with only user-assigned
    # identities has no default one)
    asked = imds.requests[before:]
    assert asked and {r.query.get("client_id") for r in asked} == {AZURE_CLIENT_ID}


@pytest.mark.cloud
def test_azure_without_the_client_id_the_store_is_unavailable(
    azure_env: azurite_support.Azurite,
    azure_container: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Prepare: AZURE_CLIENT_ID unset, so IMDS is asked for a system-assigned identity the VM
    # lacks; and no `az`, `azd` or `pwsh` to fall back on
    monkeypatch.delenv("AZURE_CLIENT_ID")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_store(f"az://{azurite_support.ACCOUNT}/{azure_container}")

    # Execute / Assert
    with pytest.raises(StoreUnavailable) as caught:
        store.check()
    assert "ManagedIdentityCredential" in str(caught.value)


@pytest.mark.cloud
def test_azure_development_connection_string(
    azure_env: azurite_support.Azurite, azure_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: Azurite's account key instead of an identity
    monkeypatch.delenv("PYGRID_AZURE_BLOB_ENDPOINT_URL")
    monkeypatch.delenv("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_env.connection_string)

    # Execute
    store = open_store(f"az://{azurite_support.ACCOUNT}/{azure_container}")
    store.put("k", b"v")

    # Assert
    assert store.get("k") == b"v"
    with pytest.raises(ValueError, match="devstoreaccount1"):
        open_store(f"az://otheraccount/{azure_container}")


def test_azure_endpoint_defaults_to_the_public_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    pytest.importorskip("azure.storage.blob")
    for name in ("PYGRID_AZURE_BLOB_ENDPOINT_URL", "AZURE_STORAGE_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)

    # Execute: nothing is requested yet
    store = open_store("az://pygridalice1234/blobs/grid1")

    # Assert
    assert store.client.url == "https://pygridalice1234.blob.core.windows.net/blobs"  # type: ignore[attr-defined]


def test_local_path_holds_the_blob_bytes(store: BlobStore) -> None:
    # Prepare
    store.put("models/1.bin", b"weights")
    # Execute
    with store.local_path("models/1.bin") as path:
        seen = path.read_bytes()
    # Assert
    assert seen == b"weights"
    with pytest.raises(BlobNotFound):
        with store.local_path("models/missing.bin"):
            pass
