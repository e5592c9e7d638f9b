"""Dataset uploads: every format read back exactly, and every kind of bad upload refused.

The bad uploads are tables (STYLE.md rule 9): each row is bytes an owner might send and the
message the Node must answer with. No test here unpickles anything.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zipfile
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from pygrid.datasets import (
    FORMATS,
    DatasetError,
    columns_to_csv,
    csvfile,
    detect_format,
    dump_columns,
    formats,
    ingest,
    load_columns,
)
from pygrid.datasets.columns import DTYPES
from pygrid.errors import InvalidInput


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def safetensors_raw(header: Any, data: bytes = b"") -> bytes:
    """Hand-built safetensors bytes, for headers that `save` never writes."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return {"x": data.data.astype(np.float32), "y": data.target.astype(np.int64)}


def sample_of_every_dtype() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    columns = {name: (rng.random((5, 2)) * 100).astype(name) for name in DTYPES if name != "bool"}
    columns["bool"] = np.array([True, False, True, True, False])
    return columns


def assert_columns_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "fmt", "expected"),
    [
        ("data.csv", None, "csv"),
        ("DATA.CSV", None, "csv"),
        ("archive.tar.npz", None, "npz"),
        ("weights.safetensors", None, "safetensors"),
        ("weights.st", None, "safetensors"),
        ("data.csv", "npz", "npz"),  # the explicit format wins over the file name
        (None, "safetensors", "safetensors"),
        ("whatever", " CSV ", "csv"),
    ],
)
def test_detect_format(filename: str | None, fmt: str | None, expected: str) -> None:
    assert detect_format(filename, fmt) == expected


@pytest.mark.parametrize(
    ("filename", "fmt", "message"),
    [
        ("data.parquet", None, "cannot tell the format of 'data.parquet'"),
        (None, None, "cannot tell the format of None"),
        ("data.csv", "xlsx", "unknown format 'xlsx': use one of csv, npz, safetensors"),
    ],
)
def test_detect_format_refuses(filename: str | None, fmt: str | None, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        detect_format(filename, fmt)


def test_formats_are_the_documented_three() -> None:
    assert FORMATS == ("csv", "npz", "safetensors")


def test_dataset_error_is_a_422() -> None:
    error = DatasetError("bad")

    assert isinstance(error, InvalidInput)
    assert error.status == 422


# -- round trips -------------------------------------------------------------------------------


def test_digits_npz_round_trip() -> None:
    # Prepare
    columns = digits()

    # Execute
    ingested = ingest(npz(**columns), filename="digits.npz", target="y")

    # Assert
    assert_columns_equal(ingested.columns, columns)
    assert ingested.schema == {
        "rows": 1797,
        "target": "y",
        "source_format": "npz",
        "columns": [
            {
                "name": "x",
                "dtype": "float32",
                "shape": [64],
                "min": 0.0,
                "max": 16.0,
                "categories": None,
            },
            {"name": "y", "dtype": "int64", "shape": [], "min": 0, "max": 9, "categories": None},
        ],
    }
    assert all(array.flags.c_contiguous for array in ingested.columns.values())
    json.dumps(ingested.schema)  # the schema is stored and served as JSON


def test_digits_safetensors_round_trip() -> None:
    columns = digits()

    ingested = ingest(save(columns), filename="digits.safetensors", target="y")

    assert_columns_equal(ingested.columns, columns)
    assert ingested.schema["source_format"] == "safetensors"
    assert [c["shape"] for c in ingested.schema["columns"]] == [[64], []]


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_every_allowed_dtype_round_trips(fmt: str) -> None:
    columns = sample_of_every_dtype()
    data = npz(**columns) if fmt == "npz" else save(columns)

    ingested = ingest(data, fmt=fmt)

    assert_columns_equal(ingested.columns, columns)
    by_name = {c["name"]: c for c in ingested.schema["columns"]}
    assert by_name["bool"]["min"] == 0 and by_name["bool"]["max"] == 1
    assert isinstance(by_name["int8"]["min"], int)
    assert isinstance(by_name["float16"]["max"], float)


def test_npz_keeps_column_order_and_converts_big_endian() -> None:
    columns = {"z": np.arange(3, dtype=">i4"), "a": np.array([1.5, 2.5, 3.5], dtype=">f8")}

    ingested = ingest(npz(**columns), fmt="npz")

    assert list(ingested.columns) == ["z", "a"]
    assert ingested.columns["z"].dtype == np.dtype("<i4")
    assert ingested.columns["a"].tolist() == [1.5, 2.5, 3.5]


def test_compressed_npz_and_non_contiguous_arrays() -> None:
    buffer = io.BytesIO()
    x = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]  # a strided view
    np.savez_compressed(buffer, x=x)

    ingested = ingest(buffer.getvalue(), fmt="npz")

    np.testing.assert_array_equal(ingested.columns["x"], x)
    assert ingested.columns["x"].flags.c_contiguous


def test_a_compressed_npz_expanding_beyond_the_cap_is_refused_before_it_expands() -> None:
    # Prepare: 64 MiB of zeros compress to ~64 KiB, a "zip bomb" in miniature
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros(8 << 20))
    data = buffer.getvalue()
    assert len(data) < 1 << 20

    # Execute / Assert: refused by the declared sizes, under a 16 MiB cap
    with pytest.raises(DatasetError, match=r"expands to \d+ bytes, more than the 16777216"):
        formats.read_npz(data, max_bytes=16 << 20)


def test_an_npy_header_asking_for_more_than_its_member_holds_is_refused() -> None:
    # Prepare: a member whose header promises 10**12 float64 but holds 8 bytes
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", member.getvalue())

    with pytest.raises(DatasetError, match=r"column 'x' declares shape \[1000000000000\]"):
        ingest(buffer.getvalue(), fmt="npz")


def test_dump_and_load_columns_round_trip() -> None:
    columns = sample_of_every_dtype()

    loaded = load_columns(dump_columns(columns))

    assert_columns_equal(loaded, columns)


@pytest.mark.parametrize(
    "data",
    [b"", b"not safetensors at all", npz(x=np.zeros(3)), struct.pack("<Q", 1000) + b"{}"],
)
def test_load_columns_refuses_garbage(data: bytes) -> None:
    with pytest.raises(DatasetError, match="safetensors"):
        load_columns(data)


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_types_and_categories() -> None:
    data = b"age,height,color,label\n30,1.5,red,1\n41,2,blue,0\n27,1.75,red,1\n"

    ingested = ingest(data, filename="people.csv", target="label")

    assert ingested.schema == {
        "rows": 3,
        "target": "label",
        "source_format": "csv",
        "columns": [
            {
                "name": "age",
                "dtype": "int64",
                "shape": [],
                "min": 27,
                "max": 41,
                "categories": None,
            },
            {
                "name": "height",
                "dtype": "float32",
                "shape": [],
                "min": 1.5,
                "max": 2.0,
                "categories": None,
            },
            {
                "name": "color",
                "dtype": "int64",
                "shape": [],
                "min": 0,
                "max": 1,
                "categories": ["blue", "red"],
            },
            {
                "name": "label",
                "dtype": "int64",
                "shape": [],
                "min": 0,
                "max": 1,
                "categories": None,
            },
        ],
    }
    assert ingested.columns["age"].tolist() == [30, 41, 27]
    assert ingested.columns["height"].dtype == np.float32
    assert ingested.columns["height"].tolist() == [1.5, 2.0, 1.75]
    assert ingested.columns["color"].tolist() == [1, 0, 1]


def test_csv_follows_rfc_4180() -> None:
    # a BOM, CRLF line ends, quoted commas, quotes and line breaks, no final line end
    data = b'\xef\xbb\xbfid,"note"\r\n1,"a, b"\r\n2,"say ""hi"""\r\n3,"two\r\nlines"'

    ingested = ingest(data, fmt="csv")

    assert list(ingested.columns) == ["id", "note"]
    note = ingested.schema["columns"][1]
    assert note["categories"] == ["a, b", 'say "hi"', "two\r\nlines"]
    assert ingested.columns["note"].tolist() == [0, 1, 2]


def test_csv_number_and_text_inference() -> None:
    data = b"ints,floats,mixed,signed,text_numbers\n1,1,1,-2,007\n2,2.5,x,+3,7\n3,1e3,2,0, 7\n"

    columns = ingest(data, fmt="csv").columns

    assert columns["ints"].dtype == np.int64
    assert columns["floats"].tolist() == [1.0, 2.5, 1000.0]
    assert columns["mixed"].tolist() == [0, 2, 1]  # categories ["1", "2", "x"]
    assert columns["signed"].tolist() == [-2, 3, 0]
    # Python's int() reads all three as 7: a column of numbers, not of strings
    assert columns["text_numbers"].tolist() == [7, 7, 7]


def test_csv_trailing_blank_lines_are_ignored() -> None:
    ingested = ingest(b"a,b\n1,2\n\n\n", fmt="csv")

    assert ingested.schema["rows"] == 1


def test_csv_accepts_the_largest_int64_and_refuses_beyond() -> None:
    largest = str(2**63 - 1).encode()

    assert ingest(b"a\n" + largest + b"\n", fmt="csv").columns["a"].tolist() == [2**63 - 1]
    with pytest.raises(
        DatasetError, match=r"CSV row 2, column 'a': 9223372036854775808 is outside the int64 range"
    ):
        ingest(b"a\n9223372036854775808\n", fmt="csv")


def test_csv_huge_integer_among_text_is_text() -> None:
    ingested = ingest(b"a\n99999999999999999999\nx\n", fmt="csv")

    assert ingested.schema["columns"][0]["categories"] == ["99999999999999999999", "x"]


def test_csv_huge_integer_among_decimals_is_a_float() -> None:
    ingested = ingest(b"a\n99999999999999999999\n1.5\n", fmt="csv")

    assert ingested.columns["a"].dtype == np.float32


def test_csv_name_may_use_every_allowed_character() -> None:
    name = "Feature_1.a-b c"
    long_name = "n" * 100

    ingested = ingest(f"{name},{long_name}\n1,2\n".encode(), fmt="csv")

    assert list(ingested.columns) == [name, long_name]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the CSV file is empty: a header row is required"),
        (b"\xef\xbb\xbf", "the CSV file is empty: a header row is required"),
        (b"a,b\n", "the CSV file has a header but no data rows"),
        (b"a,b\n\n", "the CSV file has a header but no data rows"),
        (b"\na,b\n1,2\n", "CSV header: row 1 is blank, a header row is required"),
        (b"a,,c\n1,2,3\n", "CSV header: column 2 has an empty name"),
        (b"a,b,a\n1,2,3\n", "CSV header: columns 1 and 3 are both named 'a'"),
        (b"a,b$\n1,2\n", "CSV header, column 2: column name 'b$' is invalid"),
        (b"a,b/c\n1,2\n", "CSV header, column 2: column name 'b/c' is invalid"),
        ("a,\u00e2ge\n1,2\n".encode(), "CSV header, column 2: column name '\u00e2ge' is invalid"),
        (b"n" * 101 + b"\n1\n", "CSV header, column 1: column name 'nnnn"),
        (b"a, b\n1,2\n", "CSV header, column 2: column name ' b' starts or ends with a space"),
        (b"a,b\n1,2\n3\n", "CSV row 3 has 1 cells, the header has 2"),
        (b"a,b\n1,2,3\n", "CSV row 2 has 3 cells, the header has 2"),
        (b"a,b\n1,2\n\n3,4\n", "CSV row 3 is blank: every row needs a value per column"),
        (b"a\n1\n\n2\n", "CSV row 3 is blank: every row needs a value per column"),
        (b"a,b\n1,\n", "CSV row 2, column 'b': empty cell"),
        (b'a,b\n1,2\n3,""\n', "CSV row 3, column 'b': empty cell"),
        (b"a,b\n1,x\n2, \n", "CSV row 3, column 'b': empty cell"),
        (b"a\n1\nnan\n", "CSV row 3, column 'a': nan is not a finite number"),
        (b"a\n-inf\n1\n", "CSV row 2, column 'a': -inf is not a finite number"),
        (b"a\n1\n1e39\n", "CSV row 3, column 'a': 1e+39 is outside the float32 range"),
        (b"a\n1\n\xff\n", "the CSV file is not UTF-8: byte 0xff on line 3 cannot be decoded"),
        (b'a\n"x"y\n', "CSV line 2: ',' expected after '\"'"),
    ],
)
def test_csv_refusals(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(data, fmt="csv")


@pytest.fixture
def tiny_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 3 rows read 2 at a time, so short files cross every batch boundary."""
    monkeypatch.setattr(csvfile, "_CHUNK_ROWS", 2)
    monkeypatch.setattr(csvfile, "_BATCH_ROWS", 3)


def csv_lines(header: str, rows: list[str]) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


@pytest.mark.usefixtures("tiny_batches")
def test_csv_types_settle_across_batches() -> None:
    numbers = [str(i) for i in range(7)]
    big = "99999999999999999999"
    data = csv_lines(
        "ints,late_float,late_text,big_then_float",
        [f"{n},{n},{n},{big if n == '0' else n}" for n in numbers] + ["7,7.5,seven,7.5"],
    )

    ingested = ingest(data, fmt="csv")

    columns = ingested.columns
    assert columns["ints"].tolist() == list(range(8))
    assert columns["late_float"].dtype == np.float32
    assert columns["late_float"].tolist() == [*range(7), 7.5]
    # the text column is read again from the start: every value keeps its spelling
    categories = ingested.schema["columns"][2]["categories"]
    assert categories == sorted([*numbers, "seven"])
    assert [categories[code] for code in columns["late_text"]] == [*numbers, "seven"]
    # a huge integer is refused only in a column of integers; here the last cell is a decimal
    assert columns["big_then_float"].tolist()[1:] == [*range(1, 7), 7.5]


@pytest.mark.usefixtures("tiny_batches")
@pytest.mark.parametrize(
    ("last_rows", "message"),
    [
        (["1,2"], "CSV row 9 has 2 cells, the header has 1"),
        (["nan"], "CSV row 9, column 'a': nan is not a finite number"),
        (['""'], "CSV row 9, column 'a': empty cell"),
        (["", "", "1"], "CSV row 9 is blank"),
        (["99999999999999999999", "3"], "CSV row 9, column 'a': 99999999999999999999 is outside"),
    ],
)
def test_csv_refusals_name_the_row_across_batches(last_rows: list[str], message: str) -> None:
    data = csv_lines("a", [str(i) for i in range(7)] + last_rows)

    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(data, fmt="csv")


# -- NPZ and safetensors refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an NPZ file: an .npz is a zip archive"),
        (b"hello", "not an NPZ file: an .npz is a zip archive"),
        (npy(np.zeros(3)), "this is a single .npy array, not an .npz archive of named columns"),
        (npz(x=np.zeros(3))[:40], "not a valid NPZ file"),
        (zipped(**{"notes.txt": b"hello"}), "member 'notes.txt' of the zip archive is not a .npy"),
        (
            npz(x=np.array([{"a": 1}], dtype=object)),
            "column 'x' is an object array (pickled Python objects)",
        ),
        (npz(), "the dataset holds no columns: at least one is required"),
        (npz(x=np.array(["a", "b"])), "column 'x' has dtype str32; allowed: float16, float32"),
        (npz(x=np.zeros(2, dtype=np.complex64)), "column 'x' has dtype complex64; allowed"),
        (npz(x=np.zeros(2, dtype=np.uint16)), "column 'x' has dtype uint16; allowed"),
        (npz(x=np.zeros(2, dtype=[("a", "f4")])), "column 'x' has dtype void32; allowed"),
        (npz(x=np.zeros(2, dtype="datetime64[D]")), "column 'x' has dtype datetime64[D]"),
        (npz(x=np.float32(1.0)), "column 'x' is a scalar (0-d array)"),
        (npz(x=np.zeros((3, 0))), "column 'x' has per-row shape [0], which holds no values"),
        (npz(x=np.zeros(0)), "the dataset has no rows: at least one is required"),
        (
            npz(x=np.zeros(3), y=np.zeros(4)),
            "columns disagree on the number of rows: 'x' has 3, 'y' has 4",
        ),
        (
            npz(x=np.array([1.0, np.nan])),
            "column 'x' has NaN or infinite values (first at row index 1)",
        ),
        (npz(x=np.array([[1.0, 2.0], [np.inf, 0.0]])), "(first at row index 1)"),
        (npz(**{"a/b": np.zeros(2)}), "column name 'a/b' is invalid"),
        (npz(**{" x": np.zeros(2)}), "column name ' x' starts or ends with a space"),
    ],
)
def test_npz_refusals(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(data, fmt="npz")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a safetensors file: 0 bytes, shorter than the 8-byte header length"),
        (b"1234567", "not a safetensors file: 7 bytes"),
        (
            struct.pack("<Q", 100) + b"{}",
            "its header length 100 points past the end of the 10-byte file",
        ),
        (struct.pack("<Q", 2) + b"\xff\xfe", "its header is not UTF-8 JSON"),
        (struct.pack("<Q", 5) + b'{"a":', "its header is not UTF-8 JSON"),
        (safetensors_raw([1, 2]), "its header is not a JSON object"),
        (
            safetensors_raw(
                {"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "column 'x' has safetensors dtype 'BF16'; allowed: float16",
        ),
        (save({"c": np.zeros(2, dtype=np.complex64)}), "column 'c' has safetensors dtype 'C64'"),
        (safetensors_raw({"x": "F32"}), "column 'x' has safetensors dtype None"),
        (
            safetensors_raw(
                {"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 100]}}, b"\0" * 12
            ),
            "not a valid safetensors file",
        ),
        (
            safetensors_raw({"x": {"dtype": "F32", "shape": [3]}}, b"\0" * 12),
            "not a valid safetensors file",
        ),
        (save({"x": np.zeros(3, np.float32)})[:-1], "not a valid safetensors file"),
        (safetensors_raw({}), "the dataset holds no columns"),
        (save({"s": np.array(1.0, dtype=np.float32)}), "column 's' is a scalar (0-d array)"),
        (save({"x": np.zeros(2), "y": np.zeros(3)}), "columns disagree on the number of rows"),
        (
            save({"x": np.array([np.inf], dtype=np.float16)}),
            "column 'x' has NaN or infinite values",
        ),
        (npz(x=np.zeros(3)), "not a safetensors file"),
    ],
)
def test_safetensors_refusals(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        ingest(data, fmt="safetensors")


def test_npz_with_a_member_twice_is_refused() -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate, as it should
        archive.writestr("x.npy", npy(np.zeros(2)))
        archive.writestr("x.npy", npy(np.ones(2)))

    with pytest.raises(DatasetError, match="the NPZ archive holds column 'x' twice"):
        ingest(buffer.getvalue(), fmt="npz")


@pytest.mark.parametrize("fmt", ["npz", "safetensors", "csv"])
def test_damaged_files_are_refused_never_crash(fmt: str) -> None:
    # Prepare: a valid file of each format, then deterministic damage to it
    columns = {"x": np.arange(12, dtype=np.float32).reshape(6, 2), "y": np.arange(6)}
    if fmt == "npz":
        good = npz(**columns)
    elif fmt == "safetensors":
        good = save(columns)
    else:
        good = b"x,y,z\n" + b"".join(f"{i},{i}.5,c{i}\n".encode() for i in range(6))
    rng = np.random.default_rng(0)
    damaged = [good[: int(rng.integers(len(good)))] for _ in range(100)]
    for _ in range(400):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        damaged.append(bytes(data))

    # Execute / Assert: each is either read or refused with a DatasetError
    for data in damaged:
        try:
            ingest(data, fmt=fmt)
        except DatasetError:
            pass


@pytest.mark.parametrize("target", ["label", "x ", "X"])
def test_target_must_be_a_column(target: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(f"target {target!r} is not a column")):
        ingest(npz(x=np.zeros(2), y=np.zeros(2)), fmt="npz", target=target)


def test_empty_target_means_none() -> None:
    assert ingest(npz(x=np.zeros(2)), fmt="npz", target="").schema["target"] is None


# -- CSV out -----------------------------------------------------------------------------------


def test_columns_to_csv_decodes_categories() -> None:
    schema = {
        "columns": [
            {"name": "color", "categories": ["blue", "red, dark"]},
            {"name": "n", "categories": None},
            {"name": "x", "categories": None},
            {"name": "flag", "categories": None},
        ]
    }
    columns = {
        "color": np.array([1, 0]),
        "n": np.array([3, -4], dtype=np.int8),
        "x": np.array([0.1, 2.0], dtype=np.float32),
        "flag": np.array([True, False]),
    }

    text = columns_to_csv(columns, schema)

    assert text == b'color,n,x,flag\r\n"red, dark",3,0.1,1\r\nblue,-4,2.0,0\r\n'


def test_columns_to_csv_refuses_vectors() -> None:
    schema = {"columns": [{"name": "x", "categories": None}]}

    with pytest.raises(DatasetError, match=re.escape("column 'x' has per-row shape [64]")):
        columns_to_csv({"x": np.zeros((2, 64))}, schema)


def test_csv_round_trips_through_columns_to_csv() -> None:
    data = b"age,height,color,flag\n30,0.1,red,1\n41,2,blue,0\n"
    ingested = ingest(data, fmt="csv")

    again = ingest(columns_to_csv(ingested.columns, ingested.schema), fmt="csv")

    assert_columns_equal(again.columns, ingested.columns)
    assert again.schema == ingested.schema


# -- size --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_50_mb_csv_is_read() -> None:
    # Prepare: 10,000 rows of ints, floats and text, repeated to 1.45 million rows (50 MB);
    # no timing is asserted: this guards the batched reader on a real size
    rng = np.random.default_rng(0)
    block, repeats = 10_000, 145
    cities = np.array(["berlin", "london", "paris", "rome"])
    text = {
        "id": np.arange(block).astype(str),
        "age": rng.integers(0, 100, block).astype(str),
        "x1": np.round(rng.normal(size=block), 6).astype(str),
        "x2": np.round(rng.normal(size=block), 6).astype(str),
        "city": cities[rng.integers(0, 4, block)],
        "y": rng.integers(0, 2, block).astype(str),
    }
    body = "".join(",".join(row) + "\n" for row in zip(*text.values(), strict=True))
    data = (",".join(text) + "\n" + body * repeats).encode()
    assert len(data) > 48_000_000

    # Execute
    ingested = ingest(data, fmt="csv", target="y")

    # Assert
    assert ingested.schema["rows"] == block * repeats
    dtypes = [column["dtype"] for column in ingested.schema["columns"]]
    assert dtypes == ["int64", "int64", "float32", "float32", "int64", "int64"]
    assert ingested.schema["columns"][4]["categories"] == list(cities)
    np.testing.assert_array_equal(ingested.columns["id"], np.tile(np.arange(block), repeats))
    expected_x1 = np.tile(text["x1"].astype(np.float32), repeats)
    np.testing.assert_array_equal(ingested.columns["x1"], expected_x1)
