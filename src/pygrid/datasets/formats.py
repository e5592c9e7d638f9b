"""Array formats in and out: NPZ and safetensors, one array per column; never a pickle.

NPZ is read with ``allow_pickle=False``: an ``.npz`` may carry object arrays, whose loading
unpickles bytes chosen by whoever wrote the file, so they are refused by name instead. A
safetensors header is checked before safetensors sees the bytes, so that garbage is answered
with a `DatasetError` rather than an exception from the parser.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Mapping
from typing import IO

import numpy as np

from pygrid.datasets.columns import DTYPES, DatasetError

__all__ = [
    "FORMATS",
    "detect_format",
    "dump_columns",
    "load_columns",
    "read_npz",
    "read_safetensors",
]

#: The upload formats, by the name the ``format`` form field uses.
FORMATS = ("csv", "npz", "safetensors")

#: The most an NPZ archive may expand to: compressed members (a "zip bomb") are checked against
#: it before anything is decompressed, so a small upload cannot take a Node's memory.
MAX_NPZ_BYTES = 1 << 30

_EXTENSIONS = {".csv": "csv", ".npz": "npz", ".safetensors": "safetensors", ".st": "safetensors"}

# safetensors dtype codes of the allowed dtypes; any other code (BF16, C64, U16, F8_*...) is refused
_SAFETENSORS_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
}


def detect_format(filename: str | None, fmt: str | None) -> str:
    """The upload's format: ``fmt`` if given, else from the file name's extension."""
    if fmt:
        name = fmt.strip().lower()
        if name not in FORMATS:
            raise DatasetError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return name
    lower = (filename or "").lower()
    for extension, name in _EXTENSIONS.items():
        if lower.endswith(extension):
            return name
    raise DatasetError(
        f"cannot tell the format of {filename!r}: name the format ({', '.join(FORMATS)}) "
        "or use a .csv, .npz, .safetensors or .st file name"
    )


def read_npz(data: bytes, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive by name; object arrays, non-npz zips and archives
    expanding beyond ``max_bytes`` refused."""
    if data[:6] == b"\x93NUMPY":
        raise DatasetError("this is a single .npy array, not an .npz archive of named columns")
    if data[:2] != b"PK":
        raise DatasetError("not an NPZ file: an .npz is a zip archive (numpy.savez)")
    _check_npz_sizes(data, max_bytes)
    try:
        # allow_pickle=False: object arrays would be unpickled, i.e. run the uploader's code
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # zipfile raises a dozen types on a damaged archive
        raise DatasetError(f"not a valid NPZ file: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError("not an NPZ file: an .npz is a zip archive (numpy.savez)")
    with archive:
        columns: dict[str, np.ndarray] = {}
        for name in archive.files:
            if name in columns:  # a zip may hold two members of one name
                raise DatasetError(f"the NPZ archive holds column {name!r} twice")
            columns[name] = _read_member(archive, name)
        return columns


def _check_npz_sizes(data: bytes, max_bytes: int) -> None:
    """Refuse an archive whose members expand beyond ``max_bytes`` or whose .npy headers ask
    for more array than the member holds (numpy would allocate it before finding out)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            expanded = sum(member.file_size for member in members)
            if expanded > max_bytes:
                raise DatasetError(
                    f"the NPZ archive expands to {expanded} bytes, more than the {max_bytes} "
                    "allowed: upload fewer or smaller columns"
                )
            for member in members:
                # zipfile stops decompressing at the declared file_size, so it bounds the read
                with archive.open(member) as handle:
                    _check_npy_header(handle, member)
    except DatasetError:
        raise
    except Exception as exc:  # zipfile raises a dozen types on a damaged archive
        raise DatasetError(f"not a valid NPZ file: {exc}") from None


def _check_npy_header(handle: IO[bytes], member: zipfile.ZipInfo) -> None:
    from numpy.lib import format as npy

    if handle.read(6) != b"\x93NUMPY":
        return  # not an array: _read_member names the problem
    major, minor = handle.read(2)
    read_header = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
    shape, _fortran, dtype = read_header(handle)
    if dtype.hasobject:
        return  # refused by name when read (allow_pickle=False)
    needed = math.prod(shape) * dtype.itemsize
    if needed > member.file_size:
        raise DatasetError(
            f"column {member.filename.removesuffix('.npy')!r} declares shape {list(shape)} "
            f"({needed} bytes) but holds only {member.file_size} bytes"
        )


def _read_member(archive: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    try:
        value = archive[name]
    except Exception as exc:  # zipfile raises a dozen types on a damaged archive
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise DatasetError(
                f"column {name!r} is an object array (pickled Python objects): only numeric "
                "arrays are allowed, and pickles are never loaded"
            ) from None
        raise DatasetError(f"column {name!r} of the NPZ file cannot be read: {exc}") from None
    if not isinstance(value, np.ndarray):
        raise DatasetError(
            f"member {name!r} of the zip archive is not a .npy array, so it is not an NPZ file"
        )
    return value


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, sorted by name; malformed files and dtypes refused."""
    from safetensors.numpy import load

    _check_safetensors_header(data)
    try:
        tensors = load(bytes(data))
    except Exception as exc:  # the parser's own error types are not part of its API
        raise DatasetError(f"not a valid safetensors file: {exc}") from None
    # the format keeps no order (the writer sorts by dtype): sorted names are at least stable
    return {name: tensors[name] for name in sorted(tensors)}


def _check_safetensors_header(data: bytes) -> None:
    if len(data) < 8:
        raise DatasetError(
            f"not a safetensors file: {len(data)} bytes, shorter than the 8-byte header length"
        )
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise DatasetError(
            f"not a safetensors file: its header length {length} points past the end of "
            f"the {len(data)}-byte file"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DatasetError("not a safetensors file: its header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise DatasetError("not a safetensors file: its header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        code = entry.get("dtype") if isinstance(entry, dict) else None
        if code not in _SAFETENSORS_DTYPES:
            raise DatasetError(
                f"column {name!r} has safetensors dtype {code!r}; allowed: {', '.join(DTYPES)}"
            )


def dump_columns(columns: Mapping[str, np.ndarray]) -> bytes:
    """Columns as safetensors bytes, one tensor per column, keyed by column name."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(array) for name, array in columns.items()})


def load_columns(data: bytes) -> dict[str, np.ndarray]:
    """Columns from safetensors bytes (as `dump_columns` wrote them); DatasetError if malformed."""
    return read_safetensors(data)
