"""Blob storage for models, diffs, checkpoints and datasets, chosen by URL.

``open_store("~/.pygrid/blobs")`` or ``open_store("file:///srv/pygrid/blobs")`` gives the local
reference store; ``open_store("s3://bucket/prefix")`` the S3 one, ``gs://bucket/prefix`` the
Google Cloud Storage one and ``az://account/container/prefix`` the Azure Blob one. Backends are
registered by URL scheme in `STORES` as ``"module:Class"`` strings and imported only when used,
so a cloud SDK (the extra ``pygrid[aws]``, ``[gcp]`` or ``[azure]``) is needed only by the
deployments that use its store.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from pygrid.storage.base import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    InvalidBlobKey,
    StoreUnavailable,
    validate_key,
    validate_prefix,
)

__all__ = [
    "STORES",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "InvalidBlobKey",
    "StoreUnavailable",
    "open_store",
    "resolve_store",
    "validate_key",
    "validate_prefix",
]

#: URL scheme -> ``"module:Class"`` of the `BlobStore` serving it (opened with ``from_url``).
STORES: dict[str, str] = {
    "file": "pygrid.storage.local:LocalBlobStore",
    "s3": "pygrid.storage.s3:S3BlobStore",
    "gs": "pygrid.storage.gcs:GCSBlobStore",
    "az": "pygrid.storage.azure_blob:AzureBlobStore",
}
# Stores served by an endpoint that ``open_store(..., endpoint_url=...)`` may replace.
_ENDPOINT_SCHEMES = ("s3", "gs", "az")


def resolve_store(scheme: str) -> type[BlobStore]:
    """Import and return the `BlobStore` class registered for ``scheme``."""
    try:
        target = STORES[scheme]
    except KeyError:
        known = ", ".join(sorted(STORES))
        raise ValueError(f"unknown blob store scheme {scheme!r}; known schemes: {known}") from None
    module_name, _, class_name = target.partition(":")
    store_class: type[BlobStore] = getattr(importlib.import_module(module_name), class_name)
    return store_class


def open_store(url: str | os.PathLike[str], *, endpoint_url: str | None = None) -> BlobStore:
    """Open the blob store ``url`` names: a path, ``file:///abs/path``, ``s3://bucket/prefix``,
    ``gs://bucket/prefix`` or ``az://account/container/prefix``.

    ``endpoint_url`` replaces a cloud store's API endpoint (a local stand-in: MinIO, moto, a stub,
    Azurite); each store also reads one from its environment variable.
    """
    text = os.fspath(url)
    scheme = text.partition("://")[0].lower() if "://" in text else "file"
    options: dict[str, Any] = {}
    if endpoint_url is not None:
        if scheme not in _ENDPOINT_SCHEMES:
            raise ValueError(
                f"endpoint_url applies to s3://, gs:// and az:// stores only, not to {text!r}"
            )
        options["endpoint_url"] = endpoint_url
    return resolve_store(scheme).from_url(text, **options)
