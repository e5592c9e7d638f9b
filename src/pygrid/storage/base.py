"""The blob store contract: what every storage backend MUST do, and the key rules they share."""

from __future__ import annotations

import abc
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_PREFIX",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "InvalidBlobKey",
    "StoreUnavailable",
    "Data",
    "is_valid_key",
    "validate_key",
    "validate_prefix",
]

#: S3's limit on an object key, in UTF-8 bytes; applied everywhere so keys stay portable.
MAX_KEY_BYTES = 1024
#: The usual filesystem limit on one name; applied everywhere so an S3 key also fits on disk.
MAX_SEGMENT_BYTES = 255
#: Segments starting with this are the stores' own (temporary files, health probes): never keys.
RESERVED_PREFIX = ".pygrid-"

#: What ``put`` accepts: bytes-like data, or a binary file object read in bounded chunks.
Data = bytes | bytearray | memoryview | BinaryIO


class BlobStoreError(Exception):
    """Base class of the errors a blob store raises on purpose."""


class BlobNotFound(BlobStoreError, KeyError):
    """No blob is stored under the key."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; a message reads better in logs.
        return f"no blob stored under key {self.args[0]!r}" if self.args else "blob not found"


class InvalidBlobKey(BlobStoreError, ValueError):
    """The key breaks the key rules (see `validate_key`), or clashes with the stored layout."""


class StoreUnavailable(BlobStoreError, RuntimeError):
    """`BlobStore.check` found the store unreachable or unwritable."""


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "empty segment"
    if segment in (".", ".."):
        return f"segment {segment!r} is not allowed"
    if segment.startswith(RESERVED_PREFIX):
        return f"segments starting with {RESERVED_PREFIX!r} are reserved"
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        return f"segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _text_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"must be a str, not {type(text).__name__}"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode (lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if text.startswith("/"):
        return "absolute; keys are relative '/'-separated paths"
    if "\\" in text:
        return "contains a backslash; the separator is '/'"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        return "contains a NUL or another control character"
    return None


def _key_problem(key: object) -> str | None:
    problem = _text_problem(key)
    if problem is not None:
        return problem
    assert isinstance(key, str)  # _text_problem rejected everything else
    if key == "":
        return "empty"
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key, else raise `InvalidBlobKey` saying why.

    A key is a relative path of '/'-separated segments. Rejected: non-str, empty, absolute
    (leading '/'), backslashes, NUL and other control characters, empty segments ('a//b',
    trailing '/'), '.' and '..' segments, segments starting with `RESERVED_PREFIX`, segments over
    `MAX_SEGMENT_BYTES` and keys over `MAX_KEY_BYTES` (both in UTF-8).
    """
    problem = _key_problem(key)
    if problem is not None:
        raise InvalidBlobKey(f"invalid blob key {key!r}: {problem}")
    return key


def is_valid_key(key: object) -> bool:
    """Tell whether ``key`` passes `validate_key`."""
    return _key_problem(key) is None


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it may start a valid key (``""`` lists everything), else raise.

    Every complete segment (before the last '/') follows the key rules; the last, partial
    segment only has to be free of forbidden characters.
    """
    problem = _text_problem(prefix)
    if problem is None:
        for segment in prefix.split("/")[:-1]:
            problem = _segment_problem(segment)
            if problem is not None:
                break
    if problem is not None:
        raise InvalidBlobKey(f"invalid blob key prefix {prefix!r}: {problem}")
    return prefix


def store_prefix(prefix: str, what: str) -> str:
    """A cloud store's key prefix as stored: ``""`` or ``"a/b/"``; ValueError naming ``what``."""
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    try:
        validate_key(prefix)
    except InvalidBlobKey as exc:
        raise ValueError(f"invalid {what} {prefix!r}: {exc}") from None
    return prefix + "/"


def prefixed_key(prefix: str, key: str) -> str:
    """``prefix + key`` for a cloud store, checked: a valid key within MAX_KEY_BYTES."""
    name = prefix + validate_key(key)
    if len(name.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidBlobKey(
            f"invalid blob key {key!r}: longer than {MAX_KEY_BYTES} bytes with the store's "
            f"prefix {prefix!r}"
        )
    return name


def split_store_url(url: str, scheme: str, kind: str, usage: str) -> tuple[str, str]:
    """(netloc, path) of a ``scheme://netloc/path`` store URL; ValueError naming ``usage``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != scheme or not parts.netloc:
        raise ValueError(f"not {kind} URL (use {usage}): {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{kind} URL takes no query or fragment: {url!r}")
    return parts.netloc, parts.path


class BlobStore(abc.ABC):
    """A flat store of immutable-per-version byte blobs (models, diffs, datasets) under string keys.

    Keys are relative '/'-separated paths checked by `validate_key`; every method that takes a key
    MUST validate it first and raise `InvalidBlobKey` for a bad one, before touching the backend.
    A method that needs an existing blob MUST raise `BlobNotFound` (a `KeyError`) when there is
    none. Backend failures (I/O errors, network errors) propagate as the backend raised them.

    Implementations MUST be safe to use from several threads and from several processes sharing
    the same backend (Node replicas share one store).

    An implementation registered in ``pygrid.storage.STORES`` MUST override `from_url`.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> BlobStore:
        """Open the store ``url`` names, for `pygrid.storage.open_store`.

        MUST accept every URL its `url` property returns, and MUST raise `ValueError` for a URL
        or an option it does not understand.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a URL")

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """A URL describing the store, without secrets; `pygrid.storage.open_store` accepts it."""

    @abc.abstractmethod
    def put(self, key: str, data: Data) -> int:
        """Store ``data`` under ``key``, replacing any blob there.

        Parameters
        ----------
        key : str
            A valid blob key.
        data : bytes-like or binary file object
            The content. A file object MUST be read in bounded chunks (``read(n)`` with ``n > 0``),
            never whole into memory, so that multi-gigabyte datasets can be stored; reading
            starts at its current position and goes to EOF. The store does not close it.

        Returns
        -------
        int
            The number of bytes stored.

        Notes
        -----
        MUST be atomic: a concurrent or later reader sees either the old blob or the whole new
        one, never a partial one. If writing fails (including ``data.read()`` raising), the old
        blob MUST be left intact and no partial object may become visible to `get` or `list`.
        Once ``put`` returns, the blob MUST be durable (survive a crash of this process and, for
        local disks, of the machine).
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole blob stored under ``key``; raise `BlobNotFound` if there is none."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open the blob under ``key`` for a streaming read.

        Returns
        -------
        BinaryIO
            A readable binary file object supporting ``read(n)`` and use as a context manager;
            the caller closes it. It MUST yield one consistent version of the blob even if the
            key is overwritten while it is being read.

        Raises
        ------
        BlobNotFound
            There is no blob under ``key`` (raised by ``open`` itself, not by a later read).
        """

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A filesystem path holding the blob for the duration of the ``with`` block.

        Readers that need random access (safetensors' lazy slices) use this. The default streams
        the blob into a private temporary file removed afterwards; a store whose blobs already
        are files MAY yield the file itself, which callers MUST NOT modify.
        """
        with self.open(key) as source, tempfile.NamedTemporaryFile(prefix="pygrid-blob-") as copy:
            shutil.copyfileobj(source, copy, 1024 * 1024)
            copy.flush()
            yield Path(copy.name)

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Tell whether a blob is stored under ``key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob under ``key``.

        MUST be idempotent: deleting a key that holds no blob is not an error.
        """

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return the keys of all stored blobs that start with ``prefix``, sorted.

        Parameters
        ----------
        prefix : str
            A plain string prefix (``"models/7"`` matches ``"models/7"`` and ``"models/71/x"``);
            checked by `validate_prefix`. ``""`` lists every blob.

        Returns
        -------
        list of str
            Valid keys only, in ascending code-point order. The store's own files (temporary
            files of writes in progress or interrupted, health probes) MUST NOT be listed.
        """

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Return the size in bytes of the blob under ``key``; raise `BlobNotFound` if none."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise `StoreUnavailable` if the store cannot be reached or written; else return.

        Used by the ``/status`` routes, so it MUST be cheap, MUST NOT leave anything visible to
        `list` behind, and MUST chain the underlying error (``raise ... from exc``).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
