"""A declared schema: the data must fit it, and its bounds and categories are then published."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest

from pygrid.datasets import DatasetError, ingest

MISMATCH = "the data does not match the declared schema: "


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def columns_of(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {column["name"]: column for column in schema["columns"]}


DIGITS_LIKE = npz(
    x=np.linspace(0.0, 16.0, 30, dtype=np.float32).reshape(5, 6),
    y=np.array([0, 3, 9, 2, 1]),
)


def test_a_full_declaration_is_published() -> None:
    # Prepare
    declared = {
        "columns": [
            {"name": "x", "dtype": "float32", "shape": [6], "min": -1, "max": 20.5},
            {"name": "y", "dtype": "int64", "shape": [], "min": 0, "max": 9.0},
        ],
        "rows": 5,
        "target": "y",
    }

    # Execute
    ingested = ingest(DIGITS_LIKE, fmt="npz", declared=declared)

    # Assert
    x, y = ingested.schema["columns"]
    assert (x["min"], x["max"]) == (-1.0, 20.5)
    assert (y["min"], y["max"]) == (0, 9)
    assert isinstance(x["min"], float) and isinstance(y["max"], int)
    assert ingested.schema["target"] == "y"
    assert ingested.schema["rows"] == 5


def test_a_bare_declaration_only_checks_names() -> None:
    declared = {"columns": [{"name": "y"}, {"name": "x"}]}

    ingested = ingest(DIGITS_LIKE, fmt="npz", declared=declared)

    assert ingested.schema == ingest(DIGITS_LIKE, fmt="npz").schema


def test_only_one_bound_may_be_declared() -> None:
    declared = {"columns": [{"name": "x", "max": 100}, {"name": "y", "min": -5}]}

    schema = ingest(DIGITS_LIKE, fmt="npz", declared=declared).schema

    x, y = schema["columns"]
    assert (x["min"], x["max"]) == (0.0, 100.0)
    assert (y["min"], y["max"]) == (-5, 9)


def test_a_published_schema_declares_the_same_data_again() -> None:
    data = b"age,height,color,flag\n30,0.1,red,1\n41,2,blue,0\n"
    first = ingest(data, fmt="csv", target="flag").schema

    again = ingest(data, fmt="csv", declared=first).schema

    assert again == first


def test_float_bounds_compare_as_the_column_stores_them() -> None:
    # "0.1" read into float32 is 0.10000000149...: it is not above a declared max of 0.1
    schema = ingest(b"a\n0.1\n0.05\n", fmt="csv", declared={"columns": [{"name": "a", "max": 0.1}]})

    column = schema.schema["columns"][0]
    assert column["max"] == float(np.float32(0.1))
    assert column["min"] <= column["max"]


def test_declared_categories_fix_the_codes() -> None:
    data = b"color\nred\nblue\nred\n"
    declared = {"columns": [{"name": "color", "categories": ["red", "green", "blue"]}]}

    ingested = ingest(data, fmt="csv", declared=declared)

    column = ingested.schema["columns"][0]
    assert column["categories"] == ["red", "green", "blue"]
    assert (column["min"], column["max"]) == (0, 2)
    assert ingested.columns["color"].tolist() == [0, 2, 0]


def test_declared_categories_make_a_number_column_categorical() -> None:
    data = b"zip\n01000\n75001\n"
    declared = {"columns": [{"name": "zip", "dtype": "int64", "categories": ["01000", "75001"]}]}

    ingested = ingest(data, fmt="csv", declared=declared)

    assert ingested.columns["zip"].tolist() == [0, 1]
    assert ingested.schema["columns"][0]["categories"] == ["01000", "75001"]


def test_declared_categories_on_array_codes() -> None:
    declared = {"columns": [{"name": "x"}, {"name": "y", "categories": list("abcdefghij")}]}

    ingested = ingest(DIGITS_LIKE, fmt="npz", declared=declared)

    y = ingested.schema["columns"][1]
    assert y["categories"] == list("abcdefghij")
    assert (y["min"], y["max"]) == (0, 9)


@pytest.mark.parametrize(
    ("data", "dtype", "expected"),
    [
        (b"a\n1\n-2\n", "float32", [1.0, -2.0]),
        (b"a\n2048\n-2048\n", "float16", [2048.0, -2048.0]),
        (b"a\n1\n-2\n", "int8", [1, -2]),
        (b"a\n0\n255\n", "uint8", [0, 255]),
        (b"a\n1\n0\n", "bool", [True, False]),
        (b"a\n1.0\n-3\n", "int32", [1, -3]),
        (b"a\n0.0\n1.0\n", "bool", [False, True]),
        (b"a\n0.1\n1\n", "float64", [0.1, 1.0]),  # read as float64: no float32 rounding
        (b"a\n0.1\n1\n", "float32", [float(np.float32(0.1)), 1.0]),
    ],
)
def test_csv_columns_are_cast_to_a_declared_dtype(
    data: bytes, dtype: str, expected: list[Any]
) -> None:
    ingested = ingest(data, fmt="csv", declared={"columns": [{"name": "a", "dtype": dtype}]})

    assert ingested.columns["a"].dtype == np.dtype(dtype)
    assert ingested.columns["a"].tolist() == expected
    assert ingested.schema["columns"][0]["dtype"] == dtype


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (
            b"a\n1\n2.5\n",
            {"dtype": "int64"},
            "CSV row 3, column 'a': 2.5 cannot be stored as int64 exactly",
        ),
        (
            b"a\n1\n-1\n",
            {"dtype": "uint8"},
            "CSV row 3, column 'a': -1 cannot be stored as uint8 exactly",
        ),
        (
            b"a\n300\n",
            {"dtype": "int8"},
            "CSV row 2, column 'a': 300 cannot be stored as int8 exactly",
        ),
        (
            b"a\n0\n2\n",
            {"dtype": "bool"},
            "CSV row 3, column 'a': 2 cannot be stored as bool exactly",
        ),
        (
            b"a\n2049\n",
            {"dtype": "float16"},
            "CSV row 2, column 'a': 2049 cannot be stored as float16 exactly",
        ),
        (b"a\n16777217\n", {"dtype": "float32"}, "16777217 cannot be stored as float32 exactly"),
        (
            b"a\n1e5\n",
            {"dtype": "float16"},
            "CSV row 2, column 'a': 100000.0 is outside the float16 range",
        ),
        (
            b"a\nx\n",
            {"dtype": "float32"},
            "column 'a' is categorical, stored as int64 codes, not float32",
        ),
        (
            b"a\nx\n",
            {"dtype": "int64", "categories": ["y"]},
            "CSV row 2, column 'a': 'x' is not one of the column's categories ('y')",
        ),
        (b"a\n1\n", {"shape": [2]}, MISMATCH + "column 'a' has per-row shape [], expected [2]"),
        (
            b"a\n1\n5\n",
            {"min": 2},
            MISMATCH + "column 'a' at row 2 has 1, below the declared min 2",
        ),
        (
            b"a\n1\n5\n",
            {"max": 4},
            MISMATCH + "column 'a' at row 3 has 5, above the declared max 4",
        ),
        (
            b"a\n1\n",
            {"dtype": "uint8", "max": 1000},
            MISMATCH + "column 'a' is uint8, which cannot hold the declared max 1000",
        ),
        (
            b"a\n1\n",
            {"dtype": "float16", "max": 1e6},
            MISMATCH + "column 'a' is float16, which cannot hold the declared max 1000000.0",
        ),
        (
            b"a\nx\ny\n",
            {"min": 1},
            MISMATCH + "column 'a' is categorical, its min is always 0, not 1",
        ),
        (
            b"a\n1\n0\n",
            {"dtype": "bool", "max": 2},
            MISMATCH + "column 'a' is bool, its max is always 1, not 2",
        ),
    ],
)
def test_csv_data_that_does_not_fit_is_refused(
    data: bytes, declared: dict[str, Any], message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(data, fmt="csv", declared={"columns": [{"name": "a", **declared}]})


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            {"columns": [{"name": "x"}, {"name": "label"}, {"name": "extra"}]},
            MISMATCH + "missing column(s) 'label', 'extra'; unexpected column(s) 'y'",
        ),
        ({"columns": [{"name": "x"}]}, MISMATCH + "unexpected column(s) 'y'"),
        (
            {"columns": [{"name": "x", "dtype": "float64"}, {"name": "y"}]},
            MISMATCH + "column 'x' is float32, expected float64",
        ),
        (
            {"columns": [{"name": "x", "shape": [64]}, {"name": "y"}]},
            MISMATCH + "column 'x' has per-row shape [6], expected [64]",
        ),
        (
            {"columns": [{"name": "x", "min": 1}, {"name": "y"}]},
            MISMATCH + "column 'x' at row index 0 has 0.0, below the declared min 1",
        ),
        (
            {"columns": [{"name": "x"}, {"name": "y", "max": 5}]},
            MISMATCH + "column 'y' at row index 2 has 9, above the declared max 5",
        ),
        (
            {"columns": [{"name": "x"}, {"name": "y"}], "rows": 6},
            MISMATCH + "the data has 5 rows, expected 6",
        ),
        (
            {"columns": [{"name": "x"}, {"name": "y"}], "source_format": "csv"},
            MISMATCH + "the data is npz, expected csv",
        ),
        (
            {"columns": [{"name": "x"}, {"name": "y", "categories": ["a", "b"]}]},
            MISMATCH + "column 'y' at row index 1: code 3 does not index its 2 categories",
        ),
        (
            {"columns": [{"name": "x", "categories": ["a"]}, {"name": "y"}]},
            MISMATCH + "column 'x' has categories, so it must hold one integer code per row",
        ),
        ({"columns": [{"name": "x"}, {"name": "y"}], "target": "z"}, "target 'z' is not a column"),
    ],
)
def test_array_data_that_does_not_fit_is_refused(declared: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(DIGITS_LIKE, fmt="npz", declared=declared)


def test_the_declared_target_is_used_and_must_agree() -> None:
    declared = {"columns": [{"name": "x"}, {"name": "y"}], "target": "y"}

    assert ingest(DIGITS_LIKE, fmt="npz", declared=declared).schema["target"] == "y"
    assert ingest(DIGITS_LIKE, fmt="npz", declared=declared, target="y").schema["target"] == "y"
    with pytest.raises(DatasetError, match="the target is 'x' but the declared schema says 'y'"):
        ingest(DIGITS_LIKE, fmt="npz", declared=declared, target="x")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ([], "invalid declared schema: schema: Input should be a valid dictionary"),
        ({}, "invalid declared schema: columns: Field required"),
        ({"columns": []}, "invalid declared schema: columns: List should have at least 1 item"),
        (
            {"columns": [{"name": "x"}], "owner": "me"},
            "invalid declared schema: owner: Extra inputs are not permitted",
        ),
        (
            {"columns": [{"name": "x", "unit": "cm"}]},
            "invalid declared schema: columns[0].unit: Extra inputs",
        ),
        (
            {"columns": [{"dtype": "int64"}]},
            "invalid declared schema: columns[0].name: Field required",
        ),
        (
            {"columns": [{"name": "x", "dtype": "complex64"}]},
            "invalid declared schema: columns[0].dtype: Input should be 'float16'",
        ),
        (
            {"columns": [{"name": "x", "shape": [-1]}]},
            "invalid declared schema: columns[0].shape[0]: Input should be greater than or equal to 0",
        ),
        (
            {"columns": [{"name": "x", "min": "0"}]},
            "invalid declared schema: columns[0].min.int: Input should be a valid integer",
        ),
        (
            {"columns": [{"name": "x", "max": float("nan")}]},
            "invalid declared schema: columns[0].max: Input should be a finite number",
        ),
        (
            {"columns": [{"name": "x"}], "rows": 0},
            "invalid declared schema: rows: Input should be greater than 0",
        ),
        (
            {"columns": [{"name": "x"}], "rows": True},
            "invalid declared schema: rows: Input should be a valid integer",
        ),
        (
            {"columns": [{"name": "x", "categories": []}]},
            "columns[0].categories: List should have at least 1 item",
        ),
        (
            {"columns": [{"name": "x", "categories": [""]}]},
            "columns[0].categories[0]: String should have at least 1 character",
        ),
        (
            {"columns": [{"name": "x", "categories": [" "]}]},
            "invalid declared schema: column 'x' has a blank category",
        ),
        (
            {"columns": [{"name": "x", "categories": ["a", "a"]}]},
            "invalid declared schema: column 'x' lists a category twice",
        ),
        (
            {"columns": [{"name": "x"}, {"name": "x"}]},
            "invalid declared schema: column 'x' is declared twice",
        ),
        (
            {"columns": [{"name": "x", "min": 2, "max": 1}]},
            "invalid declared schema: column 'x' has min 2 above max 1",
        ),
        ({"columns": [{"name": f"c{i}", "dtype": "no"} for i in range(5)]}, "(and 2 more)"),
    ],
)
def test_an_invalid_declaration_is_refused(declared: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(b"x\n1\n", fmt="csv", declared=declared)
