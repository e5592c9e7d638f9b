"""Uploads become checked columns and a schema: `ingest` for a dataset, `ingest_mock` for its mock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from pygrid.datasets.columns import DatasetError, check_columns
from pygrid.datasets.csvfile import cast_column, read_csv
from pygrid.datasets.formats import detect_format, read_npz, read_safetensors
from pygrid.datasets.schema import (
    DeclaredSchema,
    apply_declared,
    check_codes,
    check_names,
    check_types,
    describe,
    parse_declared,
)

__all__ = ["Ingested", "ingest", "ingest_mock"]

_DECLARED = "the data does not match the declared schema"
_MOCK = "the mock does not match the dataset"


@dataclass(frozen=True)
class Ingested:
    """A dataset ready to store: its columns (C-contiguous, rows first) and its schema (JSON)."""

    columns: dict[str, np.ndarray]
    schema: dict[str, Any]


def ingest(
    data: bytes,
    *,
    filename: str | None = None,
    fmt: str | None = None,
    declared: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> Ingested:
    """Parse and check an upload, matching it against the owner's declared schema if any."""
    fmt = detect_format(filename, fmt)
    spec = parse_declared(declared) if declared is not None else None
    columns, categories = _read(data, fmt, spec, _DECLARED)
    schema = describe(columns, categories, fmt)
    if spec is not None:
        schema = apply_declared(schema, columns, spec, _DECLARED)
    schema["target"] = _target(target, spec, columns)
    return Ingested(columns, schema)


def ingest_mock(
    data: bytes,
    *,
    schema: Mapping[str, Any],
    filename: str | None = None,
    fmt: str | None = None,
) -> dict[str, np.ndarray]:
    """Parse an owner's mock; it must have the dataset's columns, dtypes and per-row shapes."""
    fmt = detect_format(filename, fmt)
    try:
        spec = DeclaredSchema.model_validate(
            {
                "columns": [
                    {key: column[key] for key in ("name", "dtype", "shape", "categories")}
                    for column in schema["columns"]
                ]
            }
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise DatasetError(f"the dataset's schema is malformed: {exc}") from None
    columns, _ = _read(data, fmt, spec, _MOCK)
    check_types(columns, spec, _MOCK)
    return columns


def _read(
    data: bytes, fmt: str, spec: DeclaredSchema | None, subject: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Checked columns and the categories of the categorical ones."""
    declared = {column.name: column for column in spec.columns} if spec is not None else {}
    categorical = {
        name: column.categories for name, column in declared.items() if column.categories
    }
    if fmt == "csv":
        raw = read_csv(data, categorical)
        if spec is not None:
            check_names(list(raw), spec, subject)
        arrays = {
            name: cast_column(name, column, declared[name].dtype if spec is not None else None)
            for name, column in raw.items()
        }
        categories = {
            name: column.categories for name, column in raw.items() if column.categories is not None
        }
        return check_columns(arrays, fmt), categories
    found = read_npz(data) if fmt == "npz" else read_safetensors(data)
    if spec is not None:
        check_names(list(found), spec, subject)
    columns = check_columns(found, fmt)
    for name, labels in categorical.items():
        check_codes(name, columns[name], labels, fmt, subject)
    return columns, categorical


def _target(
    target: str | None, spec: DeclaredSchema | None, columns: Mapping[str, np.ndarray]
) -> str | None:
    declared = spec.target if spec is not None else None
    if target and declared and target != declared:
        raise DatasetError(f"the target is {target!r} but the declared schema says {declared!r}")
    chosen = target or declared or None
    if chosen is not None and chosen not in columns:
        names = ", ".join(map(repr, columns))
        raise DatasetError(f"target {chosen!r} is not a column of the dataset (columns: {names})")
    return chosen
