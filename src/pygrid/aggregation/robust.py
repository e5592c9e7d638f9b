"""Robust aggregators: coordinate-wise median and trimmed mean, computed chunk by chunk.

Both need every diff's value of a coordinate at once, so they cannot stream one diff at a time.
Instead each tensor is cut into row ranges along dim 0, sized so that ``num_diffs x rows`` stays
under ``chunk_elements``; the slices of every diff are stacked and reduced, then dropped. Memory
is O(num_diffs x chunk) (about 24 bytes per stacked element: the float64 stack, its sorted values
and their int64 indices), never O(num_diffs x model). A chunk is at least one row, so a tensor
with huge rows can exceed the budget.

Both are unweighted: a diff's ``num_samples`` is the device's own claim, and weighting by it
would let one device that claims a huge count dominate every coordinate, which is exactly what
these aggregators exist to prevent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from pygrid.aggregation.fedavg import all_finite, cast_like
from pygrid.aggregation.sources import DiffSource, check_diffs

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "coordinate_median",
    "row_chunks",
    "trimmed_cut",
    "trimmed_mean",
]

#: Elements stacked at once (all diffs together): 4M peaks at about 130 MB (bench/aggregate_math.py).
DEFAULT_CHUNK_ELEMENTS = 4 * 1024 * 1024

Reducer = Callable[[torch.Tensor], torch.Tensor]


def row_chunks(
    shape: tuple[int, ...], num_diffs: int, chunk_elements: int
) -> Iterator[tuple[int, int]]:
    """Row ranges ``(start, stop)`` along dim 0 with ``num_diffs x rows`` under the budget."""
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    if len(shape) == 0:
        yield 0, 1
        return
    row_elements = math.prod(shape[1:])
    step = max(1, chunk_elements // max(1, num_diffs * row_elements))
    for start in range(0, shape[0], step):
        yield start, min(shape[0], start + step)


def _reduce(
    template: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    reducer: Reducer,
    chunk_elements: int,
    dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    check_diffs(template, diffs)
    result = {}
    for name, like in template.items():
        shape = tuple(like.shape)
        out = torch.zeros(shape, dtype=torch.float64)
        for start, stop in row_chunks(shape, len(diffs), chunk_elements):
            chunk_shape = (stop - start, *shape[1:]) if shape else ()
            stacked = torch.empty((len(diffs), *chunk_shape), dtype=torch.float64)
            for index, diff in enumerate(diffs):
                piece = diff.rows(name, start, stop)
                if tuple(piece.shape) != chunk_shape:
                    raise ValueError(
                        f"diff {index} ({diff!r}): rows {start}:{stop} of tensor {name!r} read "
                        f"with shape {list(piece.shape)}, expected {list(chunk_shape)}"
                    )
                # copying into a preallocated stack avoids holding a list of pieces as well
                stacked[index].copy_(piece)
                del piece
            if not all_finite(stacked):
                bad = next(i for i in range(len(diffs)) if not all_finite(stacked[i]))
                raise ValueError(
                    f"diff {bad} ({diffs[bad]!r}): tensor {name!r} has NaN or infinite values"
                )
            reduced = reducer(stacked)
            if shape:
                out[start:stop] = reduced
            else:
                out.copy_(reduced)
            del stacked, reduced
        result[name] = cast_like(out, dtype or like)
    return result


def _median(stacked: torch.Tensor) -> torch.Tensor:
    # torch.median returns the lower of the two middle values; average them, as numpy does
    count = stacked.shape[0]
    ordered = stacked.sort(dim=0).values
    if count % 2:
        return ordered[count // 2]
    return (ordered[count // 2 - 1] + ordered[count // 2]) / 2


def coordinate_median(
    template: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted coordinate-wise median of ``diffs`` (mean of the two middle values if even)."""
    return _reduce(template, diffs, _median, chunk_elements, dtype)


def trimmed_cut(num_diffs: int, trim_ratio: float) -> int:
    """How many values a trimmed mean drops at each end: ``floor(trim_ratio * n)``, as scipy."""
    if not 0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
    return int(trim_ratio * num_diffs)


def trimmed_mean(
    template: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    trim_ratio: float,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted coordinate-wise mean of ``diffs`` without the ``floor(trim_ratio * n)`` lowest and highest values."""
    cut = trimmed_cut(len(diffs), trim_ratio)

    def reduce(stacked: torch.Tensor) -> torch.Tensor:
        if cut == 0:
            return stacked.mean(dim=0)
        return stacked.sort(dim=0).values[cut : stacked.shape[0] - cut].mean(dim=0)

    return _reduce(template, diffs, reduce, chunk_elements, dtype)
