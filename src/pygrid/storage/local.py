"""The reference blob store: a folder on the local disk (the embedded default, DESIGN.md 7)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from pygrid.storage.base import (
    RESERVED_PREFIX,
    BlobNotFound,
    BlobStore,
    Data,
    InvalidBlobKey,
    StoreUnavailable,
    is_valid_key,
    validate_key,
    validate_prefix,
)

__all__ = ["CHUNK_SIZE", "LocalBlobStore"]

#: Bytes read from a stream per write, bounding memory whatever the size of the blob.
CHUNK_SIZE = 1024 * 1024
_TEMP_PREFIX = RESERVED_PREFIX + "tmp-"
_PROBE_PREFIX = RESERVED_PREFIX + "probe-"
# A concurrent delete may prune the directory a put is about to write into; retry that many times.
_PUT_ATTEMPTS = 5
# What opening a path raises when it runs through, or is, something other than a blob file.
_NOT_A_BLOB = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root``, one file per key, written atomically and durably.

    ``root`` and every folder below it are created with mode 0700 and files with mode 0600: the
    store holds private datasets. An existing ``root`` keeps the permissions it has.

    A key that is a '/'-prefix of another (``a`` and ``a/b``) cannot be stored on a filesystem;
    `put` raises `InvalidBlobKey` for the second one.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).expanduser().absolute()
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> LocalBlobStore:
        """Open the store a plain path or a ``file:///abs/path`` URL names."""
        if options:
            raise ValueError(f"options {sorted(options)} do not apply to a local blob store")
        if "://" not in url:
            return cls(url)
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URL (use file:///absolute/path): {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"a file URL takes no query or fragment: {url!r}")
        return cls(unquote(parts.path))

    @property
    def root(self) -> Path:
        """The folder holding the blobs."""
        return self._root

    @property
    def url(self) -> str:
        """The root as a ``file://`` URL."""
        return self._root.as_uri()

    def _path(self, key: str) -> Path:
        # validate_key rules out '..', absolute keys and backslashes, so this stays under root.
        return self._root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: Data) -> int:
        """Write ``data`` to a temporary file beside the target, fsync it, then rename it over."""
        path = self._path(key)
        fd, temp = self._create_temp(key, path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                size = _write(data, file)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.replace(temp, path)
            except IsADirectoryError:
                raise InvalidBlobKey(
                    f"cannot store blob {key!r}: other blobs are stored under {key + '/'!r}"
                ) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        # The rename is durable only once the directory entry itself is on disk.
        _fsync_dir(path.parent)
        return size

    def _create_temp(self, key: str, folder: Path) -> tuple[int, str]:
        for attempt in range(_PUT_ATTEMPTS):
            try:
                self._make_folders(key, folder)
                # mkstemp creates the file O_EXCL with mode 0600.
                return tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=folder)
            except FileNotFoundError:
                if attempt == _PUT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _make_folders(self, key: str, folder: Path) -> None:
        # os.makedirs applies `mode` to the leaf only; every level must be private.
        current = self._root
        for part in folder.relative_to(self._root).parts:
            current = current / part
            try:
                current.mkdir(mode=0o700)
            except FileExistsError:
                if not current.is_dir():
                    blob = current.relative_to(self._root).as_posix()
                    raise InvalidBlobKey(
                        f"cannot store blob {key!r}: a blob is stored under {blob!r}"
                    ) from None
            else:
                _fsync_dir(current.parent)

    def get(self, key: str) -> bytes:
        """Read the whole file."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except _NOT_A_BLOB:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        """Open the file; a later overwrite renames a new file in, so this one stays consistent."""
        path = self._path(key)
        try:
            file = path.open("rb")
        except _NOT_A_BLOB:
            raise BlobNotFound(key) from None
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            file.close()
            raise BlobNotFound(key)
        return file

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """The blob's own file: writes replace files atomically, so it never changes underfoot."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        yield path

    def exists(self, key: str) -> bool:
        """Tell whether a regular file is stored under the key."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """Return the file's size."""
        path = self._path(key)
        try:
            info = path.stat()
        except _NOT_A_BLOB:
            raise BlobNotFound(key) from None
        if not stat.S_ISREG(info.st_mode):
            raise BlobNotFound(key)
        return info.st_size

    def delete(self, key: str) -> None:
        """Remove the file, then the folders it leaves empty, so the key space stays reusable."""
        path = self._path(key)
        try:
            path.unlink()
        except _NOT_A_BLOB:
            return
        _fsync_dir(path.parent)
        folder = path.parent
        while folder != self._root:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone): other blobs live there
            folder = folder.parent

    def list(self, prefix: str = "") -> list[str]:
        """Walk the folder the prefix points into, skipping the store's own files."""
        validate_prefix(prefix)
        folder_key, _, _ = prefix.rpartition("/")
        start = self._root.joinpath(*folder_key.split("/")) if folder_key else self._root
        return sorted(self._walk(start, prefix))

    def _walk(self, start: Path, prefix: str) -> Iterator[str]:
        # A folder vanishing mid-walk (a concurrent delete pruning it) just has no keys.
        for dirpath, dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self._root).as_posix()
            base = "" if relative == "." else relative + "/"
            # Descend only where keys can still match: "models/7" needs "models/7*/", not "data/".
            dirnames[:] = [
                name
                for name in dirnames
                if (base + name + "/").startswith(prefix) or prefix.startswith(base + name + "/")
            ]
            for name in filenames:
                key = base + name
                # Skips temporary files and probes (reserved names) and names no key can have.
                if key.startswith(prefix) and is_valid_key(key):
                    yield key

    def check(self) -> None:
        """Create, fsync and remove a probe file in the root."""
        try:
            if not self._root.is_dir():
                raise FileNotFoundError(f"blob store root {str(self._root)!r} does not exist")
            fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=self._root)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise StoreUnavailable(f"blob store {self.url} is not writable: {exc}") from exc


def _write(data: Data, file: BinaryIO) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        file.write(view)
        return view.nbytes
    if not hasattr(data, "read"):
        raise TypeError(f"put() takes bytes or a binary file object, not {type(data).__name__}")
    size = 0
    while chunk := data.read(CHUNK_SIZE):
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError("put() needs a file object opened in binary mode")
        file.write(chunk)
        size += memoryview(chunk).nbytes
    return size


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
