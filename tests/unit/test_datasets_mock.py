"""Mock samples: generated from the schema alone (never a real row), or supplied by the owner."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from pygrid.datasets import (
    DatasetError,
    Ingested,
    columns_to_csv,
    dump_columns,
    generate_mock,
    ingest,
    ingest_mock,
    load_columns,
)

MISMATCH = "the mock does not match the dataset: "


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits() -> Ingested:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    return ingest(npz(x=x, y=y), fmt="npz", target="y")


@pytest.fixture(scope="module")
def people() -> Ingested:
    data = b"age,height,color,member\n30,1.5,red,1\n41,2,blue,0\n27,1.75,red,1\n"
    declared = {
        "columns": [
            {"name": "age", "min": 18, "max": 99},
            {"name": "height"},
            {"name": "color", "categories": ["red", "green", "blue"]},
            {"name": "member", "dtype": "bool"},
        ]
    }
    return ingest(data, fmt="csv", declared=declared)


def assert_matches_schema(
    columns: dict[str, np.ndarray], schema: dict[str, Any], rows: int
) -> None:
    assert list(columns) == [c["name"] for c in schema["columns"]]
    for column in schema["columns"]:
        array = columns[column["name"]]
        assert array.dtype.name == column["dtype"], column["name"]
        assert list(array.shape) == [rows, *column["shape"]], column["name"]
        assert array.min() >= column["min"], column["name"]
        assert array.max() <= column["max"], column["name"]


# -- generated ---------------------------------------------------------------------------------


def test_a_digits_mock_never_holds_a_real_row(digits: Ingested) -> None:
    # Prepare
    real = {
        tuple(x) + (y,)
        for x, y in zip(digits.columns["x"].tolist(), digits.columns["y"].tolist(), strict=True)
    }

    # Execute
    mock = generate_mock(digits.schema, rows=500, seed=0)

    # Assert
    assert_matches_schema(mock, digits.schema, 500)
    generated = zip(mock["x"].tolist(), mock["y"].tolist(), strict=True)
    assert not any(tuple(x) + (y,) in real for x, y in generated)
    real_x = {tuple(x) for x in digits.columns["x"].tolist()}
    assert not any(tuple(x) in real_x for x in mock["x"].tolist())


def test_a_mock_is_deterministic_with_a_seed(digits: Ingested) -> None:
    first = generate_mock(digits.schema, rows=20, seed=7)
    again = generate_mock(digits.schema, rows=20, seed=7)
    other = generate_mock(digits.schema, rows=20, seed=8)

    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["x"], other["x"])


@pytest.mark.parametrize(("asked", "expected"), [(100, 3), (2, 2), (0, 1), (-5, 1)])
def test_a_mock_has_at_most_the_dataset_rows_and_at_least_one(
    people: Ingested, asked: int, expected: int
) -> None:
    mock = generate_mock(people.schema, rows=asked, seed=0)

    assert all(len(array) == expected for array in mock.values())


def test_a_mock_uses_published_ranges_and_categories(people: Ingested) -> None:
    schema = {**people.schema, "rows": 2000}

    mock = generate_mock(schema, rows=2000, seed=1)

    assert_matches_schema(mock, schema, 2000)
    # the declared range, not the data's: ages from 18 to 99 appear, not only 27..41
    assert mock["age"].min() < 27 and mock["age"].max() > 41
    assert set(mock["color"].tolist()) == {0, 1, 2}  # "green" too, though no row has it
    assert set(mock["member"].tolist()) == {False, True}


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        ("float64", -1.7e308, 1.7e308),  # high - low overflows: the draw must not
        ("float16", -1e6, 1e6),  # wider than float16 holds
        ("float32", 2.5, 2.5),
        ("uint8", -100, 1000),  # wider than uint8 holds
        ("int64", -(2**63), 2**63 - 1),
        ("int32", 0.5, 1.5),  # a range holding one integer
    ],
)
def test_a_mock_stays_finite_and_inside_the_dtype(dtype: str, low: float, high: float) -> None:
    schema = {
        "rows": 50,
        "columns": [
            {"name": "v", "dtype": dtype, "shape": [2], "min": low, "max": high, "categories": None}
        ],
    }

    mock = generate_mock(schema, seed=0)["v"]

    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    assert mock.dtype == np.dtype(dtype) and mock.shape == (50, 2)
    assert np.isfinite(mock.astype(np.float64)).all()
    values = mock.astype(np.float64)
    assert (values >= max(low, float(info.min))).all()
    assert (values <= min(high, float(info.max))).all()


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"rows": 3},
        {"rows": 3, "columns": [{"name": "v"}]},
        {
            "rows": 3,
            "columns": [{"name": "v", "dtype": "int64", "shape": [], "min": 0.2, "max": 0.8}],
        },
        {"rows": 3, "columns": [{"name": "v", "dtype": "int64", "shape": "x", "min": 0, "max": 1}]},
    ],
)
def test_a_malformed_schema_gives_no_mock(schema: dict[str, Any]) -> None:
    with pytest.raises(DatasetError, match="cannot generate a mock from a malformed schema"):
        generate_mock(schema)


def test_a_generated_mock_survives_storage_and_csv(people: Ingested) -> None:
    mock = generate_mock(people.schema, seed=3)

    stored = load_columns(dump_columns(mock))
    again = ingest_mock(columns_to_csv(mock, people.schema), schema=people.schema, fmt="csv")

    for name, array in mock.items():
        np.testing.assert_array_equal(stored[name], array)
        np.testing.assert_array_equal(again[name], array)


# -- supplied by the owner ---------------------------------------------------------------------


def test_an_array_mock_of_any_length_is_accepted(digits: Ingested) -> None:
    x = np.full((3, 64), 0.5, dtype=np.float32)
    y = np.array([1, 2, 3])

    mock = ingest_mock(save({"x": x, "y": y}), schema=digits.schema, filename="mock.safetensors")

    np.testing.assert_array_equal(mock["x"], x)
    np.testing.assert_array_equal(mock["y"], y)


def test_a_csv_mock_is_coded_with_the_dataset_categories(people: Ingested) -> None:
    data = b"age,height,color,member\n50,1.8,green,0\n"

    mock = ingest_mock(data, schema=people.schema, filename="mock.csv")

    assert mock["age"].tolist() == [50]
    assert mock["height"].dtype == np.float32
    assert mock["color"].tolist() == [1]  # "green" in ["red", "green", "blue"]
    assert mock["member"].tolist() == [False]


def test_a_csv_mock_for_array_categories(digits: Ingested) -> None:
    data = npz(code=np.array([0, 2, 1]))
    dataset = ingest(
        data, fmt="npz", declared={"columns": [{"name": "code", "categories": ["a", "b", "c"]}]}
    )

    mock = ingest_mock(b"code\nc\nc\n", schema=dataset.schema, fmt="csv")

    assert mock["code"].tolist() == [2, 2]


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (npz(x=np.zeros((2, 64), np.float32)), "npz", MISMATCH + "missing column(s) 'y'"),
        (
            npz(x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64), z=np.zeros(2)),
            "npz",
            MISMATCH + "unexpected column(s) 'z'",
        ),
        (
            npz(x=np.zeros((2, 64)), y=np.zeros(2, np.int64)),
            "npz",
            MISMATCH + "column 'x' is float64, expected float32",
        ),
        (
            npz(x=np.zeros((2, 8, 8), np.float32), y=np.zeros(2, np.int64)),
            "npz",
            MISMATCH + "column 'x' has per-row shape [8, 8], expected [64]",
        ),
        (
            npz(x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64)),
            "npz",
            "the dataset has no rows: at least one is required",
        ),
        (b"x,y\n1,2\n", "csv", MISMATCH + "column 'x' has per-row shape [], expected [64]"),
        (b"not an npz", "npz", "not an NPZ file"),
    ],
)
def test_a_mock_unlike_digits_is_refused(
    digits: Ingested, data: bytes, fmt: str, message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest_mock(data, schema=digits.schema, fmt=fmt)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"age,height,color\n50,1.8,red\n", MISMATCH + "missing column(s) 'member'"),
        (
            b"age,height,color,member\n50,1.8,purple,0\n",
            "CSV row 2, column 'color': 'purple' is not one of the column's categories ('red', 'green', 'blue')",
        ),
        (
            b"age,height,color,member\n50.5,1.8,red,0\n",
            "CSV row 2, column 'age': 50.5 cannot be stored as int64 exactly",
        ),
        (
            b"age,height,color,member\n50,1.8,red,2\n",
            "CSV row 2, column 'member': 2 cannot be stored as bool exactly",
        ),
        (
            b"age,height,color,member\n50,tall,red,0\n",
            "column 'height' is categorical, stored as int64 codes, not float32",
        ),
        (b"age,height,color,member\n", "the CSV file has a header but no data rows"),
    ],
)
def test_a_csv_mock_unlike_the_people_is_refused(
    people: Ingested, data: bytes, message: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest_mock(data, schema=people.schema, fmt="csv")


def test_a_mock_needs_a_format(digits: Ingested) -> None:
    with pytest.raises(DatasetError, match="cannot tell the format of 'mock.bin'"):
        ingest_mock(b"", schema=digits.schema, filename="mock.bin")


def test_a_malformed_dataset_schema_gives_no_mock() -> None:
    with pytest.raises(DatasetError, match="the dataset's schema is malformed"):
        ingest_mock(b"x\n1\n", schema={"columns": [{"name": "x"}]}, fmt="csv")
