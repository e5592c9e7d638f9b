"""Mock samples generated from a schema alone: what a data scientist may see of a dataset.

`generate_mock` reads nothing but the published schema, so it cannot leak a real row: each value
is drawn independently and uniformly from its column's published range (or categories).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pygrid.datasets.columns import FLOAT_DTYPES, DatasetError

__all__ = ["generate_mock"]


def generate_mock(
    schema: Mapping[str, Any], rows: int = 100, seed: int | None = None
) -> dict[str, np.ndarray]:
    """Random columns shaped like the schema's, ``min(rows, schema rows)`` (at least 1) of them."""
    rng = np.random.default_rng(seed)
    try:
        count = max(1, min(rows, int(schema["rows"])))
        return {
            column["name"]: _draw(rng, column, (count, *column["shape"]))
            for column in schema["columns"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"cannot generate a mock from a malformed schema: {exc}") from None


def _draw(rng: np.random.Generator, column: Mapping[str, Any], shape: tuple[int, ...]) -> Any:
    dtype = np.dtype(column["dtype"])
    categories = column.get("categories")
    if categories is not None:
        return rng.integers(0, len(categories), size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    low, high = column["min"], column["max"]
    if column["dtype"] in FLOAT_DTYPES:
        # declared bounds may be wider than the dtype holds: draw inside both
        limit = float(np.finfo(dtype).max)
        low, high = max(float(low), -limit), min(float(high), limit)
        # low*(1-u) + high*u rather than low + (high-low)*u: high-low may overflow to infinity
        u = rng.random(size=shape)
        values = np.clip(low * (1.0 - u) + high * u, low, high)
        return values.astype(dtype)
    info = np.iinfo(dtype)
    first, last = max(math.ceil(low), int(info.min)), min(math.floor(high), int(info.max))
    if first > last:
        raise ValueError(f"column {column['name']!r} has no integer in [{low}, {high}]")
    return rng.integers(first, last, size=shape, endpoint=True, dtype=np.int64).astype(dtype)
