"""Where aggregators read diffs from: one tensor, or one slice of rows, at a time.

A diff is what a device reports: ``original - trained`` for every parameter. Aggregators never
hold more than one diff's tensor (streaming means) or one chunk of rows per diff (robust
aggregators), so a Node can average thousands of diffs of a large model.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DiffSource", "FileDiff", "MemoryDiff", "check_diff", "check_diffs", "check_params"]

Shape = tuple[int, ...]


def _check_num_samples(num_samples: int) -> int:
    # bool is an int subclass; True samples is a bug, not a count.
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
    return num_samples


class DiffSource(abc.ABC):
    """One device's reported diff (``original - trained`` per parameter), read piece by piece.

    Every implementation MUST:

    - answer `names` and `shape` without reading tensor data, so that every diff of a cycle can
      be checked against the model before any maths starts;
    - materialise only what is asked for: `tensor` one whole tensor, `rows` one slice along
      dim 0, never the whole diff;
    - give the same names, shapes and values on every call: aggregators read a source more than
      once (DP-FedAvg reads it twice, the robust aggregators once per chunk);
    - hand out CPU tensors; callers treat them as read-only and do not keep them.

    Attributes
    ----------
    num_samples : int
        How many examples the device trained on (>= 0); the weight of this diff in weighted
        FedAvg. It is the device's claim: robust and DP aggregators ignore it.
    """

    num_samples: int

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Names of the tensors in the diff.

        Returns
        -------
        list of str
            Every tensor name, each once, in a stable order.
        """

    @abc.abstractmethod
    def shape(self, name: str) -> Shape:
        """Shape of tensor ``name``, without reading its data.

        Raises
        ------
        KeyError
            If the diff has no tensor ``name``.
        """

    @abc.abstractmethod
    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, whole, in the dtype it was reported in (a CPU tensor).

        Raises
        ------
        KeyError
            If the diff has no tensor ``name``.
        """

    @abc.abstractmethod
    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` along dim 0, like ``tensor(name)[start:stop]``.

        For a 0-d tensor the whole (0-d) tensor, whatever ``start`` and ``stop`` are.

        Raises
        ------
        KeyError
            If the diff has no tensor ``name``.
        """


class MemoryDiff(DiffSource):
    """A diff already in memory: the reference implementation of `DiffSource`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], num_samples: int) -> None:
        self._tensors = dict(tensors)
        for name, value in self._tensors.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"tensor {name!r} is a {type(value).__name__}, not a torch.Tensor")
        self.num_samples = _check_num_samples(num_samples)

    def __repr__(self) -> str:
        return f"MemoryDiff({len(self._tensors)} tensors, num_samples={self.num_samples})"

    def names(self) -> list[str]:
        """Names of the tensors, in the mapping's order."""
        return list(self._tensors)

    def shape(self, name: str) -> Shape:
        """Shape of tensor ``name``."""
        return tuple(self._tensors[name].shape)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` itself (no copy: callers do not modify it)."""
        return self._tensors[name]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """A view of rows ``start:stop`` of tensor ``name`` (the whole tensor if 0-d)."""
        full = self._tensors[name]
        return full if full.dim() == 0 else full[start:stop]


class FileDiff(DiffSource):
    """A diff in a safetensors file, read lazily: only the tensor or rows asked for are loaded.

    The file is opened (memory-mapped) for each read and closed straight after: a Node holding
    thousands of `FileDiff` objects holds no file descriptor, and no mapping beyond the tensors
    it has handed out (safetensors may back them with the mapping instead of a copy). The file
    must not change while the source is in use: Node blobs are written once.
    """

    def __init__(self, path: str | os.PathLike[str], num_samples: int) -> None:
        self.path = Path(path)
        self.num_samples = _check_num_samples(num_samples)
        self._shapes: dict[str, Shape] | None = None

    def __repr__(self) -> str:
        return f"FileDiff({str(self.path)!r}, num_samples={self.num_samples})"

    def _open(self) -> Any:
        from safetensors import safe_open

        try:
            return safe_open(os.fspath(self.path), framework="pt", device="cpu")
        except Exception as error:  # safetensors raises its own error types (and OSError)
            raise ValueError(f"{self.path}: not a readable safetensors file: {error}") from error

    def _header(self) -> dict[str, Shape]:
        if self._shapes is None:
            with self._open() as file:
                self._shapes = {
                    name: tuple(file.get_slice(name).get_shape()) for name in file.keys()
                }
        return self._shapes

    def names(self) -> list[str]:
        """Names of the tensors, as the file header lists them."""
        return list(self._header())

    def shape(self, name: str) -> Shape:
        """Shape of tensor ``name`` from the file header."""
        return self._header()[name]

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read from the file."""
        if name not in self._header():
            raise KeyError(name)
        with self._open() as file:
            tensor: torch.Tensor = file.get_tensor(name)
        return tensor

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name``, reading only those bytes of the file."""
        if len(self._header()[name]) == 0:
            return self.tensor(name)
        with self._open() as file:
            tensor: torch.Tensor = file.get_slice(name)[start:stop]
        return tensor


def check_params(params: Mapping[str, torch.Tensor]) -> None:
    """Raise unless ``params`` is a non-empty mapping of names to numeric (non-bool) tensors."""
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty mapping of tensor names to tensors")
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"parameter {name!r} is a {type(value).__name__}, not a torch.Tensor")
        if value.dtype == torch.bool:
            raise ValueError(f"parameter {name!r} is a bool tensor: it cannot be averaged")


def check_diff(
    template: Mapping[str, torch.Tensor], diff: DiffSource, index: int | None = None
) -> None:
    """Raise ValueError naming the first tensor of ``diff`` whose name or shape is not the template's."""
    if not isinstance(diff, DiffSource):
        which = "a diff" if index is None else f"diff {index}"
        raise TypeError(f"{which} is a {type(diff).__name__}, not a DiffSource")
    where = f"diff {index} ({diff!r})" if index is not None else repr(diff)
    names = set(diff.names())
    missing = [name for name in template if name not in names]
    if missing:
        raise ValueError(f"{where} lacks tensor {missing[0]!r}")
    unexpected = sorted(name for name in names if name not in template)
    if unexpected:
        raise ValueError(f"{where} has unexpected tensor {unexpected[0]!r}")
    for name, like in template.items():
        got, expected = tuple(diff.shape(name)), tuple(like.shape)
        if got != expected:
            raise ValueError(
                f"{where}: tensor {name!r} has shape {list(got)}, expected {list(expected)}"
            )


def check_diffs(template: Mapping[str, torch.Tensor], diffs: Sequence[DiffSource]) -> None:
    """Raise ValueError unless there are diffs and each has exactly the template's names and shapes."""
    check_params(template)
    if len(diffs) == 0:
        raise ValueError("no diffs to aggregate")
    for index, diff in enumerate(diffs):
        check_diff(template, diff, index)
