"""One contract suite for every `DiffSource` (STYLE.md rule 6), then each source's own promises.

The ``make_diff`` fixture builds the same diff as a `MemoryDiff` (the reference implementation)
and as a `FileDiff` over a safetensors file; every contract test runs against both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pygrid.aggregation import DiffSource, FileDiff, MemoryDiff

MakeDiff = Callable[[dict[str, torch.Tensor], int], DiffSource]

TENSORS = {
    "fc.weight": torch.arange(24, dtype=torch.float32).reshape(6, 4),
    "fc.bias": torch.arange(6, dtype=torch.float16),
    "embedding": torch.arange(30, dtype=torch.bfloat16).reshape(5, 3, 2),
    "temperature": torch.tensor(0.5, dtype=torch.float64),
    "steps": torch.tensor([3, 1], dtype=torch.int64),
    "empty": torch.zeros(0, 3),
}


@pytest.fixture(params=["memory", "file"])
def make_diff(request: pytest.FixtureRequest, tmp_path: Path) -> MakeDiff:
    """Build a diff from tensors, in memory or in a safetensors file."""

    def build(tensors: dict[str, torch.Tensor], num_samples: int) -> DiffSource:
        if request.param == "memory":
            return MemoryDiff(tensors, num_samples)
        path = tmp_path / f"diff-{len(list(tmp_path.iterdir()))}.safetensors"
        save_file(tensors, path)
        return FileDiff(path, num_samples)

    return build


# --- the contract --------------------------------------------------------------------------------


def test_names_and_shapes_describe_every_tensor(make_diff: MakeDiff) -> None:
    # Prepare
    diff = make_diff(TENSORS, 12)

    # Execute
    names = diff.names()

    # Assert
    assert sorted(names) == sorted(TENSORS)
    assert names == diff.names()  # stable
    assert {name: diff.shape(name) for name in names} == {
        name: tuple(tensor.shape) for name, tensor in TENSORS.items()
    }
    assert diff.num_samples == 12


@pytest.mark.parametrize("name", sorted(TENSORS))
def test_tensor_gives_the_reported_values_and_dtype(make_diff: MakeDiff, name: str) -> None:
    # Prepare
    diff = make_diff(TENSORS, 1)

    # Execute
    tensor = diff.tensor(name)

    # Assert
    assert tensor.dtype == TENSORS[name].dtype
    assert tensor.device.type == "cpu"
    assert torch.equal(tensor, TENSORS[name])
    assert torch.equal(diff.tensor(name), tensor)  # the same on every read


@pytest.mark.parametrize(
    ("name", "start", "stop"),
    [
        ("fc.weight", 0, 6),
        ("fc.weight", 2, 3),
        ("fc.weight", 4, 100),
        ("fc.weight", 3, 3),
        ("fc.bias", 1, 5),
        ("embedding", 1, 4),
        ("steps", 1, 2),
        ("empty", 0, 1),
    ],
)
def test_rows_are_a_slice_along_the_first_dimension(
    make_diff: MakeDiff, name: str, start: int, stop: int
) -> None:
    # Prepare
    diff = make_diff(TENSORS, 1)

    # Execute
    rows = diff.rows(name, start, stop)

    # Assert
    expected = TENSORS[name][start:stop]
    assert rows.dtype == expected.dtype
    assert rows.shape == expected.shape
    assert torch.equal(rows, expected)


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (0, 0), (5, 9)])
def test_rows_of_a_scalar_are_the_whole_scalar(make_diff: MakeDiff, start: int, stop: int) -> None:
    # Prepare
    diff = make_diff(TENSORS, 1)

    # Execute
    rows = diff.rows("temperature", start, stop)

    # Assert
    assert rows.shape == ()
    assert rows.item() == 0.5


@pytest.mark.parametrize(
    "read",
    [
        lambda diff: diff.shape("nope"),
        lambda diff: diff.tensor("nope"),
        lambda diff: diff.rows("nope", 0, 1),
    ],
    ids=["shape", "tensor", "rows"],
)
def test_an_unknown_tensor_name_is_a_key_error(
    make_diff: MakeDiff, read: Callable[[DiffSource], Any]
) -> None:
    # Prepare
    diff = make_diff(TENSORS, 1)

    # Execute / Assert
    with pytest.raises(KeyError):
        read(diff)


@pytest.mark.parametrize("num_samples", [-1, True, 2.0, "3", None])
def test_num_samples_must_be_a_count(make_diff: MakeDiff, num_samples: Any) -> None:
    with pytest.raises(ValueError, match="num_samples must be an int >= 0"):
        make_diff(TENSORS, num_samples)


# --- each source's own promises ------------------------------------------------------------------


def test_memory_diff_refuses_what_is_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="tensor 'w' is a list"):
        MemoryDiff({"w": [1.0, 2.0]}, 1)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a safetensors file", b"\xff" * 8 + b"{}"],
    ids=["empty", "text", "header"],
)
def test_file_diff_names_a_file_that_is_not_safetensors(tmp_path: Path, content: bytes) -> None:
    # Prepare
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors file"):
        FileDiff(path, 1).names()


def test_file_diff_of_a_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.safetensors"):
        FileDiff(tmp_path / "missing.safetensors", 1).shape("w")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_file_diffs_hold_no_file_descriptor_between_reads(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "diff.safetensors"
    save_file(TENSORS, path)
    open_before = len(os.listdir("/proc/self/fd"))

    # Execute
    diffs = [FileDiff(path, 1) for _ in range(50)]
    values = [diff.rows("fc.weight", 1, 2).sum().item() for diff in diffs]

    # Assert
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert values == [TENSORS["fc.weight"][1].sum().item()] * 50
