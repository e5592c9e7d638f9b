"""The published schema of a dataset, and the schema an owner may declare for it.

`describe` computes the schema (docs/data-centric.md, "Schema") from checked columns. A declared
schema is validated by `parse_declared` and compared with the data by `check_names` and
`apply_declared`: the data must fit the declaration, and the declaration's bounds and
categories then become the published ones.

``min``/``max`` are always numbers: the data's range for numeric columns, 0 and 1 for ``bool``,
and the code range ``0 .. len(categories) - 1`` for a categorical column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from pygrid.datasets.columns import DatasetError, row_label

__all__ = [
    "DeclaredColumn",
    "DeclaredSchema",
    "apply_declared",
    "check_codes",
    "check_names",
    "check_types",
    "describe",
    "parse_declared",
]

Bound = Annotated[int | float, Field(allow_inf_nan=False)]
Dtype = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]


class DeclaredColumn(BaseModel):
    """One column as the owner declares it; every field but the name is optional."""

    # strict: a JSON "5" is not the number 5, and true is not the integer 1
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    dtype: Dtype | None = None
    shape: list[NonNegativeInt] | None = None
    min: Bound | None = None
    max: Bound | None = None
    categories: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = (
        None
    )


class DeclaredSchema(BaseModel):
    """What an owner may declare about a dataset (the form field ``schema``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    columns: Annotated[list[DeclaredColumn], Field(min_length=1)]
    rows: PositiveInt | None = None
    target: str | None = None
    # accepted so that a published schema can be declared again as it is
    source_format: Literal["csv", "npz", "safetensors"] | None = None


def parse_declared(declared: Any) -> DeclaredSchema:
    """The declared schema validated, or DatasetError naming the first problems."""
    if isinstance(declared, Mapping) and not isinstance(declared, dict):
        declared = dict(declared)
    try:
        spec = DeclaredSchema.model_validate(declared)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(error['loc'])}: {error['msg']}" for error in exc.errors()[:3]
        )
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise DatasetError(f"invalid declared schema: {problems}{more}") from None
    seen: set[str] = set()
    for column in spec.columns:
        if column.name in seen:
            raise DatasetError(f"invalid declared schema: column {column.name!r} is declared twice")
        seen.add(column.name)
        categories = column.categories or []
        if len(set(categories)) != len(categories):
            raise DatasetError(
                f"invalid declared schema: column {column.name!r} lists a category twice"
            )
        if any(not value.strip() for value in categories):
            raise DatasetError(
                f"invalid declared schema: column {column.name!r} has a blank category"
            )
        if column.min is not None and column.max is not None and column.min > column.max:
            raise DatasetError(
                f"invalid declared schema: column {column.name!r} has min {column.min} "
                f"above max {column.max}"
            )
    return spec


def _location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "schema"


def check_names(names: Sequence[str], spec: DeclaredSchema, subject: str) -> None:
    """Refuse unless the data has exactly the declared column names."""
    expected = [column.name for column in spec.columns]
    present, wanted = set(names), set(expected)
    missing = [name for name in expected if name not in present]
    unexpected = [name for name in names if name not in wanted]
    problems = []
    if missing:
        problems.append("missing column(s) " + ", ".join(map(repr, missing)))
    if unexpected:
        problems.append("unexpected column(s) " + ", ".join(map(repr, unexpected)))
    if problems:
        raise DatasetError(f"{subject}: " + "; ".join(problems))


def check_types(columns: Mapping[str, np.ndarray], spec: DeclaredSchema, subject: str) -> None:
    """Refuse a column whose dtype or per-row shape differs from a declared one."""
    for column in spec.columns:
        array = columns[column.name]
        if column.dtype is not None and array.dtype.name != column.dtype:
            raise DatasetError(
                f"{subject}: column {column.name!r} is {array.dtype.name}, expected {column.dtype}"
            )
        if column.shape is not None and list(array.shape[1:]) != column.shape:
            raise DatasetError(
                f"{subject}: column {column.name!r} has per-row shape {list(array.shape[1:])}, "
                f"expected {column.shape}"
            )


def check_codes(
    name: str, array: np.ndarray, categories: Sequence[str], fmt: str, subject: str
) -> None:
    """Refuse an array column declared categorical unless it holds valid codes into the list."""
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise DatasetError(
            f"{subject}: column {name!r} has categories, so it must hold one integer code per "
            f"row, not {array.dtype.name} of per-row shape {list(array.shape[1:])}"
        )
    bad = (array < 0) | (array >= len(categories))
    if bad.any():
        index = int(np.argmax(bad))
        raise DatasetError(
            f"{subject}: column {name!r} at {row_label(index, fmt)}: code {array[index]} does "
            f"not index its {len(categories)} categories"
        )


def describe(
    columns: Mapping[str, np.ndarray], categories: Mapping[str, list[str]], fmt: str
) -> dict[str, Any]:
    """The schema of checked columns, with ranges from the data and no target."""
    described = []
    for name, array in columns.items():
        labels = categories.get(name)
        low: int | float
        high: int | float
        if labels is not None:
            low, high = 0, len(labels) - 1
        elif array.dtype == np.bool_:
            low, high = 0, 1
        else:
            low, high = array.min().item(), array.max().item()
        described.append(
            {
                "name": name,
                "dtype": array.dtype.name,
                "shape": list(array.shape[1:]),
                "min": low,
                "max": high,
                "categories": list(labels) if labels is not None else None,
            }
        )
    rows = next(iter(columns.values())).shape[0]
    return {"rows": rows, "target": None, "source_format": fmt, "columns": described}


def apply_declared(
    schema: dict[str, Any], columns: Mapping[str, np.ndarray], spec: DeclaredSchema, subject: str
) -> dict[str, Any]:
    """``schema`` with the declared bounds, once the data is checked to lie inside them."""
    check_types(columns, spec, subject)
    if spec.rows is not None and spec.rows != schema["rows"]:
        raise DatasetError(f"{subject}: the data has {schema['rows']} rows, expected {spec.rows}")
    if spec.source_format is not None and spec.source_format != schema["source_format"]:
        raise DatasetError(
            f"{subject}: the data is {schema['source_format']}, expected {spec.source_format}"
        )
    declared = {column.name: column for column in spec.columns}
    published = []
    for entry in schema["columns"]:
        column = declared[entry["name"]]
        entry = dict(entry)
        if entry["categories"] is not None or entry["dtype"] == "bool":
            _check_fixed_range(entry, column, subject)
        else:
            array = columns[entry["name"]]
            fmt = schema["source_format"]
            if column.min is not None:
                entry["min"] = _check_bound(column.name, array, column.min, "min", fmt, subject)
            if column.max is not None:
                entry["max"] = _check_bound(column.name, array, column.max, "max", fmt, subject)
        published.append(entry)
    return {**schema, "columns": published}


def _check_fixed_range(entry: dict[str, Any], column: DeclaredColumn, subject: str) -> None:
    """Bool and categorical ranges are fixed: a declaration may only repeat them."""
    for key, declared in (("min", column.min), ("max", column.max)):
        if declared is not None and declared != entry[key]:
            kind = "bool" if entry["categories"] is None else "categorical"
            raise DatasetError(
                f"{subject}: column {entry['name']!r} is {kind}, its {key} is always "
                f"{entry[key]}, not {declared}"
            )


def _check_bound(
    name: str, array: np.ndarray, bound: int | float, key: str, fmt: str, subject: str
) -> int | float:
    """The bound to publish, once every value of the column is checked to lie on its side."""
    limit: Any = bound
    if array.dtype.kind == "f":
        # The bound as the column's dtype holds numbers: "0.1" read into float32 is not above
        # a declared max of 0.1, and the published min can never exceed the published max.
        with np.errstate(over="ignore"):
            limit = array.dtype.type(bound)
        inside = bool(np.isfinite(limit))
        published: int | float = float(limit)
    else:
        info = np.iinfo(array.dtype) if array.dtype.kind in "iu" else np.iinfo(np.int64)
        inside = info.min <= bound <= info.max
        published = int(bound) if float(bound).is_integer() else bound
    if not inside:
        raise DatasetError(
            f"{subject}: column {name!r} is {array.dtype.name}, which cannot hold the "
            f"declared {key} {bound}"
        )
    flat = array.reshape(array.shape[0], -1)
    outside = flat < limit if key == "min" else flat > limit
    per_row = outside.any(axis=1)
    if per_row.any():
        index = int(np.argmax(per_row))
        value = flat[index][outside[index]][0].item()
        relation = "below the declared min" if key == "min" else "above the declared max"
        raise DatasetError(
            f"{subject}: column {name!r} at {row_label(index, fmt)} has {value}, {relation} {bound}"
        )
    return published
