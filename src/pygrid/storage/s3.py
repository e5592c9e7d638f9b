"""Blob store on Amazon S3 or an S3-compatible service (extra ``pygrid[aws]``)."""

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

__all__ = ["CHUNK_SIZE", "ENDPOINT_ENV", "LIST_PAGE_SIZE", "S3BlobStore"]

#: Environment variable naming an S3-compatible endpoint (MinIO, moto, ...) for every S3 store.
ENDPOINT_ENV = "PYGRID_S3_ENDPOINT_URL"
#: Largest read asked of a stream being uploaded.
CHUNK_SIZE = 1024 * 1024
#: Keys asked for per ``ListObjectsV2`` call (1000 is S3's maximum).
LIST_PAGE_SIZE = 1000
# Every object is encrypted at rest, whatever the bucket's default encryption says.
_ENCRYPTION = {"ServerSideEncryption": "AES256"}
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3BlobStore(BlobStore):
    """Blobs as objects ``<prefix><key>`` in one S3 bucket.

    S3 writes are atomic per object (a ``PutObject`` or a completed multipart upload), which gives
    the contract's atomicity; a failed upload is aborted and leaves the old object in place.

    Parameters
    ----------
    bucket : str
        The bucket; it must exist (the deployment's Terraform module creates it).
    prefix : str
        A key prefix inside the bucket (``"grid1/node-alice"``), so several stores can share it.
    endpoint_url : str, optional
        An S3-compatible endpoint; defaults to ``$PYGRID_S3_ENDPOINT_URL``, else AWS.
    region : str, optional
        Defaults to ``$AWS_DEFAULT_REGION``, then ``$AWS_REGION``, else boto3's configuration.
    client : botocore S3 client, optional
        A ready client; ``endpoint_url`` and ``region`` are then ignored.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        prefix = store_prefix(prefix, "S3 key prefix")
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            # boto3 is the `aws` extra: import it only when an S3 store is really used.
            import boto3
            from botocore.config import Config

            self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
            region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
            client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=region or None,
                # Bounded timeouts: check() backs /status, which must answer even if S3 does not.
                config=Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                ),
            )
        else:
            self.endpoint_url = client.meta.endpoint_url
        self._client = client
        self._client_error: type[Exception] = client.exceptions.ClientError

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3BlobStore:
        """Open the store an ``s3://bucket/optional/prefix`` URL names."""
        bucket, path = split_store_url(url, "s3", "an S3", "s3://bucket/optional/prefix")
        return cls(bucket, path, **options)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (the endpoint is in `endpoint_url`)."""
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")

    @property
    def client(self) -> Any:
        """The boto3 S3 client, for what the store does not wrap (bucket policy, metrics)."""
        return self._client

    def _object_key(self, key: str) -> str:
        return prefixed_key(self.prefix, key)

    def _is_missing(self, exc: Exception) -> bool:
        error = getattr(exc, "response", {}).get("Error", {})
        return str(error.get("Code")) in _MISSING_CODES

    def put(self, key: str, data: Data) -> int:
        """``PutObject`` for bytes; a managed (multipart when large) upload for a stream."""
        object_key = self._object_key(key)
        if isinstance(data, bytes | bytearray | memoryview):
            body = data if isinstance(data, bytes) else bytes(data)
            self._client.put_object(
                Bucket=self.bucket,
                Key=object_key,
                Body=body,
                ContentType="application/octet-stream",
                **_ENCRYPTION,
            )
            return len(body)
        if not hasattr(data, "read"):
            raise TypeError(f"put() takes bytes or a binary file object, not {type(data).__name__}")
        reader = _CountingReader(data)
        self._client.upload_fileobj(
            reader,
            self.bucket,
            object_key,
            ExtraArgs={"ContentType": "application/octet-stream", **_ENCRYPTION},
        )
        return reader.count

    def get(self, key: str) -> bytes:
        """``GetObject`` and read the body."""
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        """``GetObject``; the body streams one version of the object."""
        object_key = self._object_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=object_key)
        except self._client_error as exc:
            if self._is_missing(exc):
                raise BlobNotFound(key) from None
            raise
        return cast(BinaryIO, response["Body"])

    def exists(self, key: str) -> bool:
        """``HeadObject``."""
        try:
            self.size(key)
        except BlobNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """``HeadObject``'s ``ContentLength``."""
        object_key = self._object_key(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=object_key)
        except self._client_error as exc:
            if self._is_missing(exc):
                raise BlobNotFound(key) from None
            raise
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        """``DeleteObject``, which S3 already treats as idempotent."""
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Paginated ``ListObjectsV2`` below the store's prefix."""
        validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        keys = []
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                # Objects other tools wrote under the prefix may not be addressable as keys.
                if is_valid_key(key):
                    keys.append(key)
        return sorted(keys)

    def check(self) -> None:
        """``HeadBucket``: the bucket exists and these credentials may use it."""
        from botocore.exceptions import BotoCoreError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (self._client_error, BotoCoreError) as exc:
            raise StoreUnavailable(f"blob store {self.url} is unavailable: {exc}") from exc


class _CountingReader:
    """A read-only, non-seekable view of a stream that fills reads and counts bytes.

    Non-seekable on purpose: the transfer manager then reads each part once (buffering it for
    retries) instead of seeking back, so the count is the object's size. Reads are filled because
    the transfer manager takes a short read for the end of the stream (it would store a truncated
    object, or read the rest with an unbounded ``read()``), while sockets and pipes return short
    reads all the time.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._eof = False
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        parts: list[bytes] = []
        wanted = limit
        while not self._eof and (wanted is None or wanted > 0):
            # Bounded even for read(): the raw stream is never asked for "everything".
            ask = CHUNK_SIZE if wanted is None else min(wanted, CHUNK_SIZE)
            chunk = self._raw.read(ask)
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError("put() needs a file object opened in binary mode")
            if not chunk:
                self._eof = True
                break
            parts.append(bytes(chunk))
            if wanted is not None:
                wanted -= len(parts[-1])
        data = b"".join(parts)
        self.count += len(data)
        return data
