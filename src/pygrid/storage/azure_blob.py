"""Blob store on Azure Blob Storage, through azure-storage-blob (extra ``pygrid[azure]``).

``az://ACCOUNT/CONTAINER/optional/prefix`` (the fsspec/adlfs spelling): the account's blob
endpoint is ``https://ACCOUNT.blob.core.windows.net`` unless ``endpoint_url`` (or
``$PYGRID_AZURE_BLOB_ENDPOINT_URL``) names another, such as a sovereign cloud's or Azurite's.

Credentials, in order: the ``credential`` option; ``$AZURE_STORAGE_CONNECTION_STRING`` (a
development account such as Azurite's; it must name the URL's account); else
``DefaultAzureCredential``, which on a VM is its managed identity (the user-assigned one whose
client id ``$AZURE_CLIENT_ID`` holds). The Terraform module turns shared keys off and grants the
app VM's identity "Storage Blob Data Contributor" on the one container.
"""

from __future__ import annotations

import base64
import io
import os
import re
import uuid
from typing import Any, BinaryIO, cast

from pygrid.storage.base import (
    BlobNotFound,
    BlobStore,
    Data,
    StoreUnavailable,
    is_valid_key,
    prefixed_key,
    split_store_url,
    store_prefix,
    validate_prefix,
)

__all__ = ["CHUNK_SIZE", "CONNECTION_STRING_ENV", "ENDPOINT_ENV", "AzureBlobStore"]

#: Environment variable naming the blob endpoint of the account (``http://127.0.0.1:10000/acct``).
ENDPOINT_ENV = "PYGRID_AZURE_BLOB_ENDPOINT_URL"
#: The Azure SDKs' own variable for a connection string (development accounts, Azurite).
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
#: Bytes per block of a streamed upload, and per ranged read of `AzureBlobStore.open`.
CHUNK_SIZE = 4 * 1024 * 1024
#: Largest read asked of a stream being uploaded (a block fills from several).
_STREAM_READ = 1024 * 1024
# Storage account names: 3-24 lower-case letters and digits. Container names: 3-63 characters.
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$|^\$root$")
_CONTENT_TYPE = "application/octet-stream"


class AzureBlobStore(BlobStore):
    """Blobs as block blobs ``<prefix><key>`` in one Azure Storage container.

    A blob appears whole when its single upload or its block list commit lands, which gives the
    contract's atomicity: a stream that fails mid-upload leaves only uncommitted blocks (Azure
    drops them after a week), never a partial blob, and the old blob in place.

    `open` downloads the first `CHUNK_SIZE` bytes at once and the rest on demand, each range
    conditional on the ETag of the first, so a reader never mixes two versions (an overwrite
    during a long read makes it fail rather than mix).

    Parameters
    ----------
    account : str
        The storage account name.
    container : str
        The container; it must exist (the deployment's Terraform module creates it).
    prefix : str
        A blob name prefix inside the container (``"grid1/node-alice"``).
    endpoint_url : str, optional
        The account's blob endpoint; defaults to ``$PYGRID_AZURE_BLOB_ENDPOINT_URL``, else
        ``https://ACCOUNT.blob.core.windows.net``.
    credential : optional
        Anything ``BlobServiceClient`` takes (a token credential, an account key); defaults as
        the module says.
    """

    def __init__(
        self,
        account: str,
        container: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        credential: Any = None,
    ) -> None:
        if not _ACCOUNT.match(account or ""):
            raise ValueError(f"invalid Azure storage account name: {account!r}")
        if not _CONTAINER.match(container or ""):
            raise ValueError(f"invalid Azure container name: {container!r}")
        prefix = store_prefix(prefix, "Azure blob prefix")
        # azure-storage-blob is the `azure` extra: import it only when the store is really used.
        import azure.core.exceptions
        from azure.storage.blob import BlobServiceClient

        self._errors = azure.core.exceptions
        self.account = account
        self.container = container
        self.prefix = prefix
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        # Bounded memory: reads and writes move CHUNK_SIZE at a time.
        options: dict[str, Any] = {
            "max_single_get_size": CHUNK_SIZE,
            "max_chunk_get_size": CHUNK_SIZE,
            "max_block_size": CHUNK_SIZE,
            "max_single_put_size": CHUNK_SIZE,
            "connection_timeout": 10,
            "read_timeout": 60,
        }
        connection_string = os.environ.get(CONNECTION_STRING_ENV)
        if credential is None and connection_string and not self.endpoint_url:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
            if service.account_name != account:
                raise ValueError(
                    f"${CONNECTION_STRING_ENV} is for account {service.account_name!r}, "
                    f"not {account!r}"
                )
        else:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                # DefaultAzureCredential reads $AZURE_CLIENT_ID for a user-assigned identity.
                credential = DefaultAzureCredential()
            url = self.endpoint_url or f"https://{account}.blob.core.windows.net"
            service = BlobServiceClient(url, credential=credential, **options)
        self._service = service
        self._container = service.get_container_client(container)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AzureBlobStore:
        """Open the store an ``az://ACCOUNT/CONTAINER/optional/prefix`` URL names."""
        usage = "az://ACCOUNT/CONTAINER/optional/prefix"
        account, path = split_store_url(url, "az", "an Azure Blob", usage)
        container, _, prefix = path.lstrip("/").partition("/")
        if not container:
            raise ValueError(
                f"an Azure Blob URL names a container: az://ACCOUNT/CONTAINER: {url!r}"
            )
        return cls(account, container, prefix, **options)

    @property
    def url(self) -> str:
        """``az://ACCOUNT/CONTAINER/prefix`` (the endpoint is in `endpoint_url`)."""
        return f"az://{self.account}/{self.container}/{self.prefix.rstrip('/')}".rstrip("/")

    @property
    def client(self) -> Any:
        """The container client, for what the store does not wrap."""
        return self._container

    def _name(self, key: str) -> str:
        return prefixed_key(self.prefix, key)

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(self._name(key))

    def _settings(self) -> Any:
        from azure.storage.blob import ContentSettings

        return ContentSettings(content_type=_CONTENT_TYPE)

    def put(self, key: str, data: Data) -> int:
        """One Put Blob for up to `CHUNK_SIZE` bytes; staged blocks and one commit for more."""
        blob = self._blob(key)
        if isinstance(data, bytes | bytearray | memoryview):
            body = data if isinstance(data, bytes) else bytes(data)
            blob.upload_blob(body, overwrite=True, content_settings=self._settings())
            return len(body)
        if not hasattr(data, "read"):
            raise TypeError(f"put() takes bytes or a binary file object, not {type(data).__name__}")
        chunk = _read_full(data, CHUNK_SIZE)
        if len(chunk) < CHUNK_SIZE:
            blob.upload_blob(chunk, overwrite=True, content_settings=self._settings())
            return len(chunk)
        from azure.storage.blob import BlobBlock

        # Ids unique to this upload (a concurrent put of the same key stages its own), all of
        # one length as Azure requires. Nothing is visible until commit_block_list.
        upload = uuid.uuid4().hex
        blocks: list[Any] = []
        total = 0
        while chunk:
            block_id = base64.b64encode(f"{upload}-{len(blocks):08d}".encode()).decode()
            blob.stage_block(block_id, chunk, length=len(chunk))
            blocks.append(BlobBlock(block_id=block_id))
            total += len(chunk)
            chunk = _read_full(data, CHUNK_SIZE)
        blob.commit_block_list(blocks, content_settings=self._settings())
        return total

    def get(self, key: str) -> bytes:
        """The whole blob (ranged downloads of one version)."""
        with self.open(key) as reader:
            return reader.read()

    def open(self, key: str) -> BinaryIO:
        """A reader of one version of the blob; `BlobNotFound` at once if there is none."""
        blob = self._blob(key)
        try:
            downloader = blob.download_blob(max_concurrency=1)
        except self._errors.ResourceNotFoundError:
            raise BlobNotFound(key) from None
        return cast(BinaryIO, _DownloadReader(downloader))

    def exists(self, key: str) -> bool:
        """Get Blob Properties succeeds."""
        return bool(self._blob(key).exists())

    def size(self, key: str) -> int:
        """The blob's size from Get Blob Properties."""
        try:
            return int(self._blob(key).get_blob_properties().size)
        except self._errors.ResourceNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        """Delete Blob; deleting nothing is not an error."""
        try:
            self._blob(key).delete_blob()
        except self._errors.ResourceNotFoundError:
            pass

    def list(self, prefix: str = "") -> list[str]:
        """List Blobs below the store's prefix, every page (committed blobs only)."""
        validate_prefix(prefix)
        keys = []
        for item in self._container.list_blobs(name_starts_with=self.prefix + prefix):
            key = str(item.name)[len(self.prefix) :]
            # Blobs other tools wrote under the prefix may not be addressable as keys.
            if is_valid_key(key):
                keys.append(key)
        return sorted(keys)

    def check(self) -> None:
        """Get Container Properties: the container exists and this identity can use it."""
        try:
            self._container.get_container_properties(timeout=10)
        except Exception as exc:  # Azure and connection errors, and azure-identity's
            raise StoreUnavailable(f"blob store {self.url} is unavailable: {exc}") from exc


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``, fewer only at its end, read in bounded pieces."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        chunk = stream.read(min(wanted, _STREAM_READ))
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError("put() needs a file object opened in binary mode")
        if not chunk:
            break
        parts.append(bytes(chunk))
        wanted -= len(parts[-1])
    return b"".join(parts)


class _DownloadReader(io.RawIOBase):
    """A file object over a ``StorageStreamDownloader`` (which pins the blob's ETag)."""

    def __init__(self, downloader: Any) -> None:
        self._downloader = downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._downloader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return bytes(self._downloader.read())
