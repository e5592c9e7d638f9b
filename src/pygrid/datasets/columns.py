"""Columns: the checks every dataset passes, whatever format it arrived in.

A dataset is a mapping of column name -> numpy array whose first dimension is the row. Readers
of each format produce such a mapping; `check_columns` then refuses what the contract forbids
and normalises the rest (native byte order, C-contiguous) so the Node can store it as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from pygrid.errors import InvalidInput

__all__ = [
    "DTYPES",
    "FLOAT_DTYPES",
    "DatasetError",
    "check_column_name",
    "check_columns",
    "row_label",
]

#: The column dtypes a dataset may hold (numpy names).
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})

# ASCII on purpose: names travel as safetensors keys, JSON job specs and result tensor names
# ("<column>.<stat>"), and every consumer can then check them with the same plain regex.
_NAME = re.compile(r"[A-Za-z0-9 _.\-]{1,100}")


class DatasetError(InvalidInput):
    """A dataset (or its declared schema or mock) was refused; the message says where and why."""

    code = "invalid_dataset"


def check_column_name(name: object, where: str = "") -> str:
    """``name`` if it is a valid column name, else DatasetError naming it."""
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasetError(
            f"{prefix}column name {name!r} is invalid: use 1-100 characters from letters, "
            "digits, space, '_', '.' and '-'"
        )
    # " age" and "age" would be two columns that look the same in every listing
    if name != name.strip():
        raise DatasetError(f"{prefix}column name {name!r} starts or ends with a space")
    return name


def row_label(index: int, fmt: str) -> str:
    """How messages name data row ``index`` (0-based) in a file of format ``fmt``."""
    if fmt == "csv":
        return f"row {index + 2}"  # the header is row 1, as in a spreadsheet
    return f"row index {index}"


def check_columns(columns: Mapping[str, object], fmt: str) -> dict[str, np.ndarray]:
    """Refuse what the contract forbids; give the columns back normalised (native, C-contiguous)."""
    if not columns:
        raise DatasetError("the dataset holds no columns: at least one is required")
    result: dict[str, np.ndarray] = {}
    for name, value in columns.items():
        check_column_name(name)
        result[name] = _normalise(name, value)
    rows = {name: array.shape[0] for name, array in result.items()}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name!r} has {count}" for name, count in rows.items())
        raise DatasetError(f"columns disagree on the number of rows: {counts}")
    if next(iter(rows.values())) == 0:
        raise DatasetError("the dataset has no rows: at least one is required")
    for name, array in result.items():
        _check_finite(name, array, fmt)
    return result


def _normalise(name: str, value: object) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise DatasetError(f"column {name!r} is a {type(value).__name__}, not an array")
    dtype = value.dtype
    if dtype.hasobject:
        raise DatasetError(f"column {name!r} holds Python objects: only numeric arrays are allowed")
    if dtype.names is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        raise DatasetError(f"column {name!r} has dtype {dtype.name}; allowed: {', '.join(DTYPES)}")
    if value.ndim == 0:
        raise DatasetError(
            f"column {name!r} is a scalar (0-d array): a column needs one value per row"
        )
    if value.size == 0 and value.shape[0] != 0:
        raise DatasetError(
            f"column {name!r} has per-row shape {list(value.shape[1:])}, which holds no values"
        )
    # safetensors writes little-endian; a big-endian upload is converted, not refused
    native = value.astype(dtype.newbyteorder("="), copy=False)
    return np.ascontiguousarray(native)


def _check_finite(name: str, array: np.ndarray, fmt: str) -> None:
    if array.dtype.name not in FLOAT_DTYPES:
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    per_row = finite.reshape(array.shape[0], -1).all(axis=1)
    index = int(np.argmin(per_row))
    raise DatasetError(
        f"column {name!r} has NaN or infinite values (first at {row_label(index, fmt)}): "
        "only finite numbers are allowed"
    )
