"""CSV in and out: the stdlib `csv` module (RFC 4180), a header row, one record per row.

Reading infers each column's type from all its cells: every cell an integer (as Python's
``int`` reads it) -> ``int64``; every cell a number (``float``) -> ``float64`` for now, stored
as ``float32`` unless a declared dtype says otherwise (`cast_column`); anything else is
categorical: ``int64`` codes into the sorted distinct values.

The file is read as a stream of batches, and each batch of a column becomes a numpy array at
once (C-level ``map`` and ``numpy.fromiter``), so a cell's Python string lives only as long as
its batch: memory stays near the size of the arrays, not of millions of strings. A column is
typed speculatively (integers, then numbers); the rare column that turns out to hold text after
batches of numbers is read again in a second pass. Python loops over cells run only on error
paths, to name the offending row.

Messages count rows as a spreadsheet does: the header is row 1, the first record row 2.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pygrid.datasets.columns import DatasetError, check_column_name

__all__ = ["CsvColumn", "cast_column", "columns_to_csv", "read_csv"]

# Records are taken from the reader a few hundred at a time, so each row's list dies young:
# rows that survive into the garbage collector's older generations make every full collection
# rescan them, which made a 37 MB file take 5 s to read instead of 1 s.
_CHUNK_ROWS = 256
# Cells are converted to arrays this many rows at a time.
_BATCH_ROWS = 65536
_SHOWN_CATEGORIES = 10
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class CsvColumn:
    """One column as read: ``int64`` or ``float64`` values, or ``int64`` codes into categories."""

    values: np.ndarray
    categories: list[str] | None = None


def _row(index: int) -> str:
    return f"CSV row {index + 2}"


def read_csv(
    data: bytes, categories: Mapping[str, Sequence[str]] | None = None
) -> dict[str, CsvColumn]:
    """Parse CSV bytes; ``categories`` forces the named columns to be categorical with those values."""
    _check_utf8(data)
    forced = categories or {}
    header, batches = _batches(data)
    columns = [_Column(name, forced.get(name)) for name in header]
    rows = 0
    for start, cells in batches:
        for column, values in zip(columns, cells, strict=True):
            column.add(values, start)
        rows = start + len(cells[0])
    if rows == 0:
        raise DatasetError("the CSV file has a header but no data rows")
    text = {
        index: _Column(header[index], text=True) for index, c in enumerate(columns) if c.is_text
    }
    if text:  # numbers first, text later: read those columns again, as text from the start
        for start, cells in _batches(data)[1]:
            for index, column in text.items():
                column.add(cells[index], start)
        for index, column in text.items():
            columns[index] = column
    return {name: column.finish() for name, column in zip(header, columns, strict=True)}


def _batches(data: bytes) -> tuple[list[str], Iterator[tuple[int, list[list[str]]]]]:
    """The checked header, and ``(first row index, cells per column)`` batches of records."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DatasetError(f"CSV line {reader.line_num}: {exc}") from None
    if header is None:
        raise DatasetError("the CSV file is empty: a header row is required")
    return _check_header(header), _records(reader, len(header))


def _records(reader: Any, width: int) -> Iterator[tuple[int, list[list[str]]]]:
    columns: list[list[str]] = [[] for _ in range(width)]
    start = rows = 0
    blank_at: int | None = None  # a blank line is fine only if nothing follows it
    try:
        while chunk := list(itertools.islice(reader, _CHUNK_ROWS)):
            if blank_at is not None or not all(chunk):
                chunk, blank_at = _drop_trailing_blanks(chunk, rows, blank_at)
                if not chunk:
                    continue
            if set(map(len, chunk)) != {width}:  # C-level: no Python code per row
                index = next(i for i, row in enumerate(chunk) if len(row) != width)
                raise DatasetError(
                    f"{_row(rows + index)} has {len(chunk[index])} cells, the header has {width}"
                )
            for column, values in zip(columns, zip(*chunk, strict=True), strict=True):
                column.extend(values)
            rows += len(chunk)
            if rows - start >= _BATCH_ROWS:
                yield start, columns
                columns, start = [[] for _ in range(width)], rows
    except csv.Error as exc:
        raise DatasetError(f"CSV line {reader.line_num}: {exc}") from None
    if rows > start:
        yield start, columns


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(
            f"the CSV file is not UTF-8: byte 0x{data[exc.start]:02x} on line {line} "
            "cannot be decoded"
        ) from None


def _check_header(header: list[str]) -> list[str]:
    if not header:
        raise DatasetError("CSV header: row 1 is blank, a header row is required")
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if not name:
            raise DatasetError(f"CSV header: column {position} has an empty name")
        check_column_name(name, where=f"CSV header, column {position}")
        if name in seen:
            raise DatasetError(
                f"CSV header: columns {seen[name]} and {position} are both named {name!r}"
            )
        seen[name] = position
    return header


def _drop_trailing_blanks(
    chunk: list[list[str]], before: int, blank_at: int | None
) -> tuple[list[list[str]], int | None]:
    """The chunk without blank lines, refusing any blank line that has records after it."""
    kept: list[list[str]] = []
    for offset, row in enumerate(chunk):
        if not row:
            blank_at = before + offset if blank_at is None else blank_at
        elif blank_at is not None:
            raise DatasetError(f"{_row(blank_at)} is blank: every row needs a value per column")
        else:
            kept.append(row)
    return kept, blank_at


class _Column:
    """One column's cells, converted batch by batch to the narrowest type that holds them all."""

    def __init__(
        self, name: str, categories: Sequence[str] | None = None, *, text: bool = False
    ) -> None:
        self.name = name
        self.categories = list(categories) if categories is not None else None
        self.kind = "codes" if text or categories is not None else "int"
        self.codes = {value: code for code, value in enumerate(self.categories or [])}
        self.parts: list[np.ndarray] = []
        self.is_text = False  # set when cells read as numbers so far turn out to hold text
        # an integer beyond int64 is refused if the column turns out to be all integers
        self.big_int: tuple[int, str] | None = None
        self.all_int = True

    def add(self, values: list[str], start: int) -> None:
        """Convert one batch of cells, the first being data row ``start`` (0-based)."""
        if self.is_text:
            return
        if "" in values:
            raise DatasetError(
                f"{_row(start + values.index(''))}, column {self.name!r}: empty cell"
            )
        if self.kind == "codes":
            self.parts.append(self._encode(values, start))
            return
        if self.kind == "int":
            try:
                self.parts.append(np.fromiter(map(int, values), np.int64, count=len(values)))
                return
            except ValueError:
                self.all_int = False
            except OverflowError:
                self._note_big_int(values, start)
            self.kind = "float"
            self.parts = [part.astype(np.float64) for part in self.parts]
        elif self.big_int is not None and self.all_int:
            self._note_big_int(values, start)
        try:
            self.parts.append(np.fromiter(map(float, values), np.float64, count=len(values)))
        except ValueError:
            if self.parts:  # earlier batches were read as numbers, losing their spelling
                self.is_text, self.parts = True, []
            else:
                self.kind = "codes"
                self.parts.append(self._encode(values, start))

    def _note_big_int(self, values: list[str], start: int) -> None:
        try:
            numbers = list(map(int, values))
        except ValueError:
            self.all_int = False
            return
        if self.big_int is None:
            index = next((i for i, n in enumerate(numbers) if n not in _INT64), None)
            if index is not None:
                self.big_int = (start + index, values[index].strip())

    def _encode(self, values: list[str], start: int) -> np.ndarray:
        distinct = set(values)
        if not distinct.issubset(self.codes):
            if self.categories is not None:
                self._refuse_unknown(values, start)
            for value in distinct.difference(self.codes):
                self.codes[value] = len(self.codes)
        return np.fromiter(map(self.codes.__getitem__, values), np.int64, count=len(values))

    def _refuse_unknown(self, values: list[str], start: int) -> None:
        categories = self.categories or []
        index = next(i for i, value in enumerate(values) if value not in self.codes)
        shown = ", ".join(map(repr, categories[:_SHOWN_CATEGORIES]))
        more = ", ..." if len(categories) > _SHOWN_CATEGORIES else ""
        raise DatasetError(
            f"{_row(start + index)}, column {self.name!r}: {values[index]!r} is not one of the "
            f"column's categories ({shown}{more})"
        )

    def finish(self) -> CsvColumn:
        """The whole column; refuses what only the whole column shows."""
        values = np.concatenate(self.parts)
        if self.kind == "codes":
            return self._finish_codes(values)
        if self.kind == "float":
            if self.big_int is not None and self.all_int:
                # 20-digit identifiers would silently lose digits as floats: refuse, not round
                index, text = self.big_int
                raise DatasetError(
                    f"{_row(index)}, column {self.name!r}: {text} is outside the int64 range"
                )
            finite = np.isfinite(values)
            if not finite.all():
                index = int(np.argmin(finite))
                raise DatasetError(
                    f"{_row(index)}, column {self.name!r}: {values[index]} is not a finite number"
                )
        return CsvColumn(values)

    def _finish_codes(self, codes: np.ndarray) -> CsvColumn:
        if self.categories is not None:
            return CsvColumn(codes, self.categories)
        categories = sorted(self.codes)
        blank = next((value for value in categories if not value.strip()), None)
        if blank is not None:
            index = int(np.argmax(codes == self.codes[blank]))
            raise DatasetError(f"{_row(index)}, column {self.name!r}: empty cell")
        # codes were handed out in order of appearance; the contract wants sorted categories
        order = np.empty(len(categories), dtype=np.int64)
        order[[self.codes[value] for value in categories]] = np.arange(len(categories))
        return CsvColumn(order[codes], categories)


def cast_column(name: str, column: CsvColumn, dtype: str | None) -> np.ndarray:
    """The column stored as ``dtype`` (default: int64, float32, or int64 codes); lossy casts refused."""
    values = column.values
    if column.categories is not None:
        if dtype not in (None, "int64"):
            raise DatasetError(
                f"column {name!r} is categorical, stored as int64 codes, not {dtype}"
            )
        return values
    if dtype is None:
        dtype = "int64" if values.dtype == np.int64 else "float32"
    target = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(target)
        if target.kind == "f":
            _refuse_where(name, values, ~np.isfinite(cast), f"is outside the {dtype} range")
        # a number read as a float is rounded to the nearest float of the target, as the
        # default float32 is; every other cast (int -> float, anything -> int) must be exact
        if not (target.kind == "f" and values.dtype.kind == "f"):
            exact = cast.astype(values.dtype) == values
            _refuse_where(name, values, ~exact, f"cannot be stored as {dtype} exactly")
    return cast


def _refuse_where(name: str, values: np.ndarray, bad: np.ndarray, problem: str) -> None:
    if bad.any():
        index = int(np.argmax(bad))
        raise DatasetError(f"{_row(index)}, column {name!r}: {values[index].item()!r} {problem}")


def columns_to_csv(columns: Mapping[str, np.ndarray], schema: Mapping[str, Any]) -> bytes:
    """CSV bytes with a header row; categorical codes written as their category strings."""
    categories = {column["name"]: column.get("categories") for column in schema["columns"]}
    texts: list[np.ndarray] = []
    for name, array in columns.items():
        if array.ndim != 1:
            raise DatasetError(
                f"column {name!r} has per-row shape {list(array.shape[1:])}: "
                "CSV holds only one value per row and column"
            )
        labels = categories.get(name)
        if labels is not None:
            texts.append(np.asarray(labels, dtype=object)[array])
        elif array.dtype == np.bool_:
            texts.append(array.astype(np.uint8).astype(str))  # 0/1 read back as a number
        else:
            texts.append(array.astype(str))  # numpy's shortest repr for the array's own dtype
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(zip(*texts, strict=True))
    return buffer.getvalue().encode("utf-8")
