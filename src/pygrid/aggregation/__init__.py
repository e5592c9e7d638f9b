"""Model-centric FL aggregation: the pure maths that turns a cycle's diffs into a new checkpoint.

No Flask, no database: a Node gives `aggregate` the old parameters, the cycle's diffs (as
`DiffSource` objects, typically `FileDiff` over the stored safetensors reports) and the optimiser
state it kept, and stores what comes back. The method is ``server_config.aggregation`` (see
`pygrid.aggregation.config`), dispatched by name through `AGGREGATORS`.

Every diff is ``original - trained`` (PyGrid's convention), so plain FedAvg is
``params - weighted_mean(diffs)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pygrid.aggregation.config import (
    AggregationConfig,
    DPFedAvg,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    Median,
    TrimmedMean,
    parse_aggregation_config,
)
from pygrid.aggregation.dp import (
    PrivacyBudgetExceeded,
    dp_mean,
    epsilon_after,
    max_cycles,
    would_exceed,
)
from pygrid.aggregation.fedavg import StreamingSum, WeightedMean, weighted_mean
from pygrid.aggregation.optimizers import apply_update, fedadam_step, fedavgm_step, fedyogi_step
from pygrid.aggregation.robust import DEFAULT_CHUNK_ELEMENTS, coordinate_median, trimmed_mean
from pygrid.aggregation.sources import DiffSource, FileDiff, MemoryDiff, check_diffs

__all__ = [
    "AGGREGATORS",
    "DEFAULT_CHUNK_ELEMENTS",
    "AggregateResult",
    "AggregationConfig",
    "Aggregator",
    "DPFedAvg",
    "DiffSource",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "FileDiff",
    "Median",
    "MemoryDiff",
    "PrivacyBudgetExceeded",
    "StreamingSum",
    "TrimmedMean",
    "WeightedMean",
    "aggregate",
    "epsilon_after",
    "max_cycles",
    "parse_aggregation_config",
    "would_exceed",
]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AggregateResult:
    """What one cycle's aggregation produces; the Node stores ``params`` and ``state``."""

    params: Tensors
    """The new checkpoint: the same names, shapes and dtypes as the old one."""
    state: Tensors
    """Server optimiser state to pass to the next cycle (empty for stateless methods)."""
    epsilon: float | None
    """DP-FedAvg only: the epsilon spent once this cycle is released (at ``config.delta``)."""
    num_diffs: int
    """How many diffs were aggregated."""
    total_samples: int
    """Sum of the diffs' claimed num_samples (reported for every method, weighted or not)."""


class Aggregator(Protocol):
    """One aggregation method: ``(config, params, diffs, state) -> (params, state, epsilon)``.

    An aggregator receives diffs already checked against ``params`` (names and shapes, at least
    one diff) and MUST NOT modify ``params``, ``state`` or the diffs; it returns new tensors.
    """

    def __call__(
        self,
        config: AggregationConfig,
        params: Mapping[str, torch.Tensor],
        diffs: Sequence[DiffSource],
        state: Mapping[str, torch.Tensor],
        *,
        cycles_done: int,
        seed: int | None,
        chunk_elements: int,
    ) -> tuple[Tensors, Tensors, float | None]: ...


ServerStep = Callable[..., tuple[Tensors, Tensors]]


def _plain_step(
    params: Mapping[str, torch.Tensor],
    mean: Tensors,
    state: Mapping[str, torch.Tensor],
    config: object,
) -> tuple[Tensors, Tensors]:
    return apply_update(params, mean), {}


def _weighted_mean_then(step: ServerStep, kind: type) -> Aggregator:
    """FedAvg and the server optimisers share one shape: stream the weighted mean, then step."""

    def run(
        config: AggregationConfig,
        params: Mapping[str, torch.Tensor],
        diffs: Sequence[DiffSource],
        state: Mapping[str, torch.Tensor],
        **_: object,
    ) -> tuple[Tensors, Tensors, float | None]:
        assert isinstance(config, kind)
        mean = weighted_mean(params, diffs, dtype=torch.float64)
        return (*step(params, mean, state, config), None)

    return run


def _median(
    config: AggregationConfig,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    state: Mapping[str, torch.Tensor],
    *,
    chunk_elements: int,
    **_: object,
) -> tuple[Tensors, Tensors, float | None]:
    assert isinstance(config, Median)
    median = coordinate_median(params, diffs, chunk_elements=chunk_elements, dtype=torch.float64)
    return apply_update(params, median), {}, None


def _trimmed_mean(
    config: AggregationConfig,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    state: Mapping[str, torch.Tensor],
    *,
    chunk_elements: int,
    **_: object,
) -> tuple[Tensors, Tensors, float | None]:
    assert isinstance(config, TrimmedMean)
    mean = trimmed_mean(
        params, diffs, config.trim_ratio, chunk_elements=chunk_elements, dtype=torch.float64
    )
    return apply_update(params, mean), {}, None


def _dp_fedavg(
    config: AggregationConfig,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    state: Mapping[str, torch.Tensor],
    *,
    cycles_done: int,
    seed: int | None,
    **_: object,
) -> tuple[Tensors, Tensors, float | None]:
    assert isinstance(config, DPFedAvg)
    # checked before any maths: a release past the budget must never exist, even in memory
    epsilon = epsilon_after(cycles_done + 1, config)
    if epsilon > config.target_epsilon:
        raise PrivacyBudgetExceeded(
            f"cycle {cycles_done + 1} would spend epsilon {epsilon:.4g} > target_epsilon "
            f"{config.target_epsilon:g} (delta {config.delta:g}); "
            f"this process fits {max_cycles(config)} cycles"
        )
    noisy_mean = dp_mean(params, diffs, config, seed=seed, dtype=torch.float64)
    return apply_update(params, noisy_mean), {}, epsilon


#: ``config.method`` -> the function that aggregates with it.
AGGREGATORS: dict[str, Aggregator] = {
    "fedavg": _weighted_mean_then(_plain_step, FedAvg),
    "fedavgm": _weighted_mean_then(fedavgm_step, FedAvgM),
    "fedadam": _weighted_mean_then(fedadam_step, FedAdam),
    "fedyogi": _weighted_mean_then(fedyogi_step, FedYogi),
    "median": _median,
    "trimmed_mean": _trimmed_mean,
    "dp_fedavg": _dp_fedavg,
}


def aggregate(
    config: AggregationConfig,
    params: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    state: Mapping[str, torch.Tensor] | None = None,
    *,
    cycles_done: int = 0,
    seed: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> AggregateResult:
    """The next checkpoint from ``params`` and one cycle's ``diffs``, by ``config.method``."""
    diffs = list(diffs)
    check_diffs(params, diffs)
    if cycles_done < 0:
        raise ValueError(f"cycles_done must be >= 0, got {cycles_done}")
    try:
        aggregator = AGGREGATORS[config.method]
    except (AttributeError, KeyError):
        raise ValueError(f"unknown aggregation config {config!r}") from None
    new_params, new_state, epsilon = aggregator(
        config,
        params,
        diffs,
        dict(state or {}),
        cycles_done=cycles_done,
        seed=seed,
        chunk_elements=chunk_elements,
    )
    return AggregateResult(
        params=new_params,
        state=new_state,
        epsilon=epsilon,
        num_diffs=len(diffs),
        total_samples=sum(diff.num_samples for diff in diffs),
    )
