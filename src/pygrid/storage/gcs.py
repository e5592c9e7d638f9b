"""Blob store on Google Cloud Storage, through google-cloud-storage (extra ``pygrid[gcp]``).

``gs://bucket/optional/prefix``. On a GCP VM the client finds the VM's service account through
Application Default Credentials; the Terraform module grants it ``roles/storage.objectUser`` on
the deployment's bucket only. A plain-http endpoint (``$PYGRID_GCS_ENDPOINT_URL``, a local
stand-in) gets anonymous credentials.
"""

from __future__ import annotations

import os
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

__all__ = ["CHUNK_SIZE", "ENDPOINT_ENV", "READ_CHUNK_SIZE", "REQUIRED_PERMISSIONS", "GCSBlobStore"]

#: Environment variable naming a GCS JSON API endpoint (a local stand-in) for every GCS store.
ENDPOINT_ENV = "PYGRID_GCS_ENDPOINT_URL"
#: Bytes per request of a resumable upload; GCS wants a multiple of 256 KiB.
CHUNK_SIZE = 8 * 1024 * 1024
#: Bytes per ranged request when a blob is read as a stream (`GCSBlobStore.open`).
READ_CHUNK_SIZE = 4 * 1024 * 1024
#: Largest read asked of a stream being uploaded (the upload buffer fills from several).
_STREAM_READ = 1024 * 1024
#: What `GCSBlobStore.check` asks ``testIamPermissions`` for: everything the store does.
REQUIRED_PERMISSIONS = (
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
)
_CONTENT_TYPE = "application/octet-stream"


class GCSBlobStore(BlobStore):
    """Blobs as objects ``<prefix><key>`` in one GCS bucket.

    GCS makes an object visible only when its upload completes (a single request, or the last
    chunk of a resumable upload), which gives the contract's atomicity: a stream that fails
    mid-upload leaves its resumable session unfinished, and the old object in place.

    `open` pins the object's generation, so a reader never mixes two versions. Reading a pinned
    generation after an overwrite needs the bucket's object versioning (the Terraform module turns
    it on); without it, such a read fails instead of returning mixed bytes.

    Parameters
    ----------
    bucket : str
        The bucket; it must exist (the deployment's Terraform module creates it).
    prefix : str
        A key prefix inside the bucket (``"grid1/node-alice"``), so several stores can share it.
    endpoint_url : str, optional
        The JSON API root; defaults to ``$PYGRID_GCS_ENDPOINT_URL``, else Google's.
    project : str, optional
        Billing project of the requests; defaults to ``$GOOGLE_CLOUD_PROJECT``, else none (object
        calls do not need one).
    credentials : google.auth.credentials.Credentials, optional
        Defaults to Application Default Credentials (anonymous for a plain-http endpoint).
    client : google.cloud.storage.Client, optional
        A ready client; the options above are then ignored.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        project: str | None = None,
        credentials: Any = None,
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid GCS bucket name: {bucket!r}")
        prefix = store_prefix(prefix, "GCS object prefix")
        # google-cloud-storage is the `gcp` extra: import it only when a GCS store is really used.
        import google.api_core.exceptions
        from google.cloud.storage import Client

        self._errors = google.api_core.exceptions
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        if client is None:
            from google.api_core.client_options import ClientOptions

            if (
                credentials is None
                and self.endpoint_url
                and self.endpoint_url.startswith("http://")
            ):
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
            client = Client(
                project=project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None,
                credentials=credentials,
                client_options=(
                    ClientOptions(api_endpoint=self.endpoint_url) if self.endpoint_url else None
                ),
            )
        self._client = client
        self._bucket = client.bucket(bucket)
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, **options: Any) -> GCSBlobStore:
        """Open the store a ``gs://bucket/optional/prefix`` URL names."""
        bucket, path = split_store_url(url, "gs", "a GCS", "gs://bucket/optional/prefix")
        return cls(bucket, path, **options)

    @property
    def url(self) -> str:
        """``gs://bucket/prefix`` (the endpoint is in `endpoint_url`)."""
        return f"gs://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")

    @property
    def client(self) -> Any:
        """The google-cloud-storage client, for what the store does not wrap."""
        return self._client

    def _object_name(self, key: str) -> str:
        return prefixed_key(self.prefix, key)

    def _blob(self, key: str, generation: int | None = None) -> Any:
        blob = self._bucket.blob(self._object_name(key), generation=generation)
        blob.chunk_size = CHUNK_SIZE
        return blob

    def put(self, key: str, data: Data) -> int:
        """One upload request for up to `CHUNK_SIZE` bytes; a resumable upload for more."""
        blob = self._blob(key)
        if isinstance(data, bytes | bytearray | memoryview):
            body = data if isinstance(data, bytes) else bytes(data)
            blob.upload_from_string(body, content_type=_CONTENT_TYPE)
            return len(body)
        if not hasattr(data, "read"):
            raise TypeError(f"put() takes bytes or a binary file object, not {type(data).__name__}")
        first = _read_full(data, CHUNK_SIZE)
        if len(first) < CHUNK_SIZE:
            blob.upload_from_string(first, content_type=_CONTENT_TYPE)
            return len(first)
        # Unknown length: a resumable upload of CHUNK_SIZE requests. The object appears when the
        # last one lands; a read error before that leaves the session unfinished (GCS drops it).
        reader = _ChunkReader(first, data)
        blob.upload_from_file(reader, content_type=_CONTENT_TYPE)
        return reader.count

    def get(self, key: str) -> bytes:
        """The whole object in one download."""
        blob = self._blob(key)
        try:
            return cast(bytes, blob.download_as_bytes())
        except self._errors.NotFound:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        """Ranged reads of `READ_CHUNK_SIZE` bytes, all of the generation current at open."""
        current = self._bucket.get_blob(self._object_name(key))
        if current is None:
            raise BlobNotFound(key)
        pinned = self._blob(key, generation=current.generation)
        return cast(BinaryIO, pinned.open("rb", chunk_size=READ_CHUNK_SIZE))

    def exists(self, key: str) -> bool:
        """The object's metadata can be read."""
        return self._bucket.get_blob(self._object_name(key)) is not None

    def size(self, key: str) -> int:
        """The object's ``size`` from its metadata."""
        blob = self._bucket.get_blob(self._object_name(key))
        if blob is None:
            raise BlobNotFound(key)
        return int(blob.size)

    def delete(self, key: str) -> None:
        """Delete the live object; deleting nothing is not an error."""
        try:
            self._blob(key).delete()
        except self._errors.NotFound:
            pass

    def list(self, prefix: str = "") -> list[str]:
        """``objects.list`` below the store's prefix, every page."""
        validate_prefix(prefix)
        keys = []
        for blob in self._client.list_blobs(self._bucket, prefix=self.prefix + prefix):
            key = blob.name[len(self.prefix) :]
            # Objects other tools wrote under the prefix may not be addressable as keys.
            if is_valid_key(key):
                keys.append(key)
        return sorted(keys)

    def check(self) -> None:
        """``testIamPermissions``: the bucket exists and this identity may do all the store does.

        ``roles/storage.objectUser`` holds no ``storage.buckets.get``: asking which permissions
        are held needs none, and also proves the store is writable.
        """
        try:
            held = set(self._bucket.test_iam_permissions(list(REQUIRED_PERMISSIONS), timeout=10))
        except Exception as exc:  # API and connection errors, and google-auth's (no credentials)
            raise StoreUnavailable(f"blob store {self.url} is unavailable: {exc}") from exc
        missing = sorted(set(REQUIRED_PERMISSIONS) - held)
        if missing:
            raise StoreUnavailable(
                f"blob store {self.url} is unavailable: this identity lacks {', '.join(missing)} "
                "(grant roles/storage.objectUser on the bucket)"
            )


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``, fewer only at its end, read in bounded pieces.

    Sockets and pipes return short reads all the time; the upload must not take one for the end.
    """
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


class _ChunkReader:
    """What a resumable upload reads: the bytes read ahead, then the stream, in full reads.

    ``tell`` counts the bytes handed out (the upload checks it). Not seekable: a failed chunk
    fails the upload rather than re-reading a stream that cannot go back.
    """

    def __init__(self, first: bytes, rest: BinaryIO) -> None:
        self._first = first
        self._rest = rest
        self.count = 0

    def tell(self) -> int:
        return self.count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK_SIZE  # bounded even for read(): the upload asks for chunks anyway
        data = self._first[:size]
        self._first = self._first[len(data) :]
        if len(data) < size:
            data += _read_full(self._rest, size - len(data))
        self.count += len(data)
        return data
