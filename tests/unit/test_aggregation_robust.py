"""Coordinate-wise median and trimmed mean: numpy/scipy agreement, chunking, robustness, memory."""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pygrid.aggregation import (
    AggregationConfig,
    DiffSource,
    FedAvg,
    FileDiff,
    Median,
    MemoryDiff,
    TrimmedMean,
    aggregate,
)
from pygrid.aggregation.robust import coordinate_median, row_chunks, trimmed_cut, trimmed_mean

SHAPES = {"conv.weight": (5, 3, 2, 2), "fc.weight": (17, 9), "fc.bias": (9,), "scale": ()}


def random_diffs(count: int, seed: int = 0, shapes: dict = SHAPES) -> list[MemoryDiff]:
    generator = torch.Generator().manual_seed(seed)
    return [
        MemoryDiff(
            {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()},
            num_samples=1 + i,
        )
        for i in range(count)
    ]


def template_of(diffs: list[MemoryDiff]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(diffs[0].shape(name)) for name in diffs[0].names()}


def reference_trim_mean(values: np.ndarray, trim_ratio: float) -> np.ndarray:
    """scipy's trim_mean along axis 0, or the same definition in numpy where scipy is missing."""
    try:
        from scipy.stats import trim_mean
    except ImportError:
        cut = int(trim_ratio * len(values))
        return np.sort(values, axis=0)[cut : len(values) - cut].mean(axis=0)
    return np.asarray(trim_mean(values, trim_ratio, axis=0))


def stacked(diffs: list[MemoryDiff], name: str) -> np.ndarray:
    return np.stack([diff.tensor(name).double().numpy() for diff in diffs])


# --- agreement with numpy and scipy --------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 6, 11])
def test_median_matches_numpy(count: int) -> None:
    # Prepare
    diffs = random_diffs(count, seed=count)

    # Execute
    median = coordinate_median(template_of(diffs), diffs, dtype=torch.float64)

    # Assert
    for name in SHAPES:
        np.testing.assert_allclose(median[name].numpy(), np.median(stacked(diffs, name), axis=0))


@pytest.mark.parametrize(
    ("count", "trim_ratio"),
    [(3, 0.0), (10, 0.1), (10, 0.25), (11, 0.2), (11, 0.3), (20, 0.45), (7, 0.49)],
)
def test_trimmed_mean_matches_scipy(count: int, trim_ratio: float) -> None:
    # Prepare
    diffs = random_diffs(count, seed=100 + count)

    # Execute
    result = trimmed_mean(template_of(diffs), diffs, trim_ratio, dtype=torch.float64)

    # Assert
    for name in SHAPES:
        expected = reference_trim_mean(stacked(diffs, name), trim_ratio)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("count", "trim_ratio", "cut"), [(10, 0.1, 1), (10, 0.19, 1), (10, 0.2, 2), (3, 0.3, 0)]
)
def test_trimmed_mean_cuts_floor_of_ratio_times_n_at_each_end(
    count: int, trim_ratio: float, cut: int
) -> None:
    assert trimmed_cut(count, trim_ratio) == cut


@pytest.mark.parametrize("chunk_elements", [1, 7, 64, 10**9])
@pytest.mark.parametrize("config", [Median(), TrimmedMean(trim_ratio=0.2)], ids=["median", "trim"])
def test_any_chunk_budget_gives_the_same_result(
    config: AggregationConfig, chunk_elements: int, tmp_path: Path
) -> None:
    # Prepare
    diffs = random_diffs(9, seed=5)
    files = []
    for index, diff in enumerate(diffs):
        save_file({name: diff.tensor(name) for name in diff.names()}, tmp_path / f"{index}.st")
        files.append(FileDiff(tmp_path / f"{index}.st", diff.num_samples))
    params = template_of(diffs)

    # Execute
    reference = aggregate(config, params, diffs)
    chunked = aggregate(config, params, files, chunk_elements=chunk_elements)

    # Assert
    for name in params:
        assert torch.equal(chunked.params[name], reference.params[name])


@pytest.mark.parametrize(
    ("shape", "num_diffs", "budget", "expected"),
    [
        ((), 10, 1, [(0, 1)]),
        ((10,), 2, 8, [(0, 4), (4, 8), (8, 10)]),
        ((10,), 2, 1000, [(0, 10)]),
        ((3, 100), 5, 1, [(0, 1), (1, 2), (2, 3)]),
        ((4, 5), 2, 20, [(0, 2), (2, 4)]),
        ((0, 5), 3, 100, []),
    ],
)
def test_row_chunks_cover_every_row_once_within_the_budget(
    shape: tuple[int, ...], num_diffs: int, budget: int, expected: list[tuple[int, int]]
) -> None:
    assert list(row_chunks(shape, num_diffs, budget)) == expected


# --- robustness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "tolerance"),
    [(Median(), 0.5), (TrimmedMean(trim_ratio=0.2), 0.5), (TrimmedMean(trim_ratio=0.25), 0.5)],
    ids=["median", "trim-0.2", "trim-0.25"],
)
def test_two_scaled_diffs_of_ten_cannot_drag_robust_aggregators(
    config: AggregationConfig, tolerance: float
) -> None:
    # Prepare: 8 honest devices near 1.0, 2 attackers send their diff times 100 and claim a
    # thousand times more samples
    generator = torch.Generator().manual_seed(0)
    honest = [1.0 + 0.1 * torch.randn(1000, generator=generator) for _ in range(8)]
    attackers = [100 * (1.0 + 0.1 * torch.randn(1000, generator=generator)) for _ in range(2)]
    diffs = [MemoryDiff({"w": value}, 10) for value in honest]
    diffs += [MemoryDiff({"w": value}, 10_000) for value in attackers]
    params = {"w": torch.zeros(1000)}
    honest_mean = torch.stack(honest).mean(dim=0)

    # Execute
    robust = aggregate(config, params, diffs).params["w"]
    fedavg = aggregate(FedAvg(), params, diffs).params["w"]

    # Assert: new = params - mean, so the honest model is -honest_mean
    assert float((robust + honest_mean).abs().max()) < tolerance
    assert float((fedavg + honest_mean).abs().min()) > 50


# --- memory --------------------------------------------------------------------------------------


class CountingDiff(DiffSource):
    """Records the elements of all slices handed out and still alive, and the peak of that."""

    live = 0
    peak = 0

    def __init__(self, inner: DiffSource) -> None:
        self.inner, self.num_samples = inner, inner.num_samples

    def names(self) -> list[str]:
        return self.inner.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def tensor(self, name: str) -> torch.Tensor:
        raise AssertionError("robust aggregators read rows, never whole tensors")

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        piece = self.inner.rows(name, start, stop)
        CountingDiff.live += piece.numel()
        CountingDiff.peak = max(CountingDiff.peak, CountingDiff.live)
        weakref.finalize(piece, CountingDiff._release, piece.numel())
        return piece

    @staticmethod
    def _release(count: int) -> None:
        CountingDiff.live -= count


@pytest.mark.parametrize("config", [Median(), TrimmedMean()], ids=["median", "trim"])
def test_robust_aggregators_read_one_slice_at_a_time(
    config: AggregationConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(CountingDiff, "live", 0)
    monkeypatch.setattr(CountingDiff, "peak", 0)
    shapes = {"big": (400, 50)}
    diffs = [CountingDiff(diff) for diff in random_diffs(20, shapes=shapes)]
    budget = 20 * 50 * 4  # four rows of each of the 20 diffs

    # Execute
    aggregate(config, {"big": torch.zeros(400, 50)}, diffs, chunk_elements=budget)

    # Assert: at most one slice (4 rows) alive at any time, none kept
    assert CountingDiff.peak == 4 * 50
    assert CountingDiff.live == 0


def test_non_finite_values_are_refused_naming_the_diff() -> None:
    # Prepare
    diffs = random_diffs(4)
    poisoned = {name: diffs[2].tensor(name).clone() for name in diffs[2].names()}
    poisoned["fc.weight"][3, 4] = math.inf
    diffs[2] = MemoryDiff(poisoned, 1)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"diff 2 \(MemoryDiff.*\): tensor 'fc.weight' has NaN"):
        coordinate_median(template_of(diffs), diffs)
