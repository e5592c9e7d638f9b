"""`pygrid.aggregation.aggregate`: configs, weighted FedAvg, server optimisers, errors, memory.

Pure maths: no Flask, no database. Every test is Prepare / Execute / Assert. A diff is
``original - trained`` (PyGrid's convention), so FedAvg's new model is ``params - mean(diffs)``.
The robust aggregators, DP-FedAvg and the `DiffSource` contract have their own files.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import typing
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load, save, save_file

from pygrid.aggregation import (
    AGGREGATORS,
    AggregationConfig,
    DiffSource,
    DPFedAvg,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    FileDiff,
    Median,
    MemoryDiff,
    TrimmedMean,
    WeightedMean,
    aggregate,
    parse_aggregation_config,
)
from pygrid.aggregation.fedavg import StreamingSum, all_finite

Tensors = dict[str, torch.Tensor]

SHAPES = {"conv.weight": (4, 3, 2, 2), "conv.bias": (4,), "fc.weight": (10, 16), "scale": ()}


# --- helpers -------------------------------------------------------------------------------------


def random_tensors(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> Tensors:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def memory_diffs(count: int, seed: int = 0) -> list[MemoryDiff]:
    return [MemoryDiff(random_tensors(seed + i), num_samples=1 + 7 * i) for i in range(count)]


def to_files(diffs: list[MemoryDiff], folder: Path) -> list[FileDiff]:
    files = []
    for index, diff in enumerate(diffs):
        path = folder / f"diff-{index}.safetensors"
        save_file({name: diff.tensor(name).contiguous() for name in diff.names()}, path)
        files.append(FileDiff(path, diff.num_samples))
    return files


def numpy_weighted_mean(diffs: list[MemoryDiff], name: str) -> np.ndarray:
    stacked = np.stack([diff.tensor(name).double().numpy() for diff in diffs])
    return np.average(stacked, axis=0, weights=[diff.num_samples for diff in diffs])


class Ledger:
    """Counts elements of diff tensors handed out and still alive, and the peak of that count."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> torch.Tensor:
        self.live += tensor.numel()
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._release, tensor.numel())
        return tensor

    def _release(self, count: int) -> None:
        self.live -= count


class TrackedDiff(DiffSource):
    """A `DiffSource` that reports every tensor it hands out to a shared `Ledger`."""

    def __init__(self, inner: DiffSource, ledger: Ledger) -> None:
        self.inner, self.ledger, self.num_samples = inner, ledger, inner.num_samples

    def names(self) -> list[str]:
        return self.inner.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self.ledger.track(self.inner.tensor(name))

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.ledger.track(self.inner.rows(name, start, stop))


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, FedAvg()),
        ({"method": "fedavg"}, FedAvg()),
        ({"method": "fedavgm"}, FedAvgM(server_lr=1.0, momentum=0.9)),
        ({"method": "fedadam"}, FedAdam(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)),
        ({"method": "fedyogi", "tau": 0.01}, FedYogi(tau=0.01)),
        ({"method": "median"}, Median()),
        ({"method": "trimmed_mean"}, TrimmedMean(trim_ratio=0.1)),
        (
            {"method": "dp_fedavg", "clip_norm": 1, "noise_multiplier": 1.1, "target_epsilon": 8},
            DPFedAvg(clip_norm=1.0, noise_multiplier=1.1, target_epsilon=8.0, delta=1e-5),
        ),
    ],
)
def test_config_parses_each_method_with_its_defaults(data: Any, expected: Any) -> None:
    # Execute
    config = parse_aggregation_config(data)

    # Assert
    assert config == expected
    assert parse_aggregation_config(json.loads(config.model_dump_json())) == config


DP = {"method": "dp_fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "method"),
        ({"method": "krum"}, "method"),
        ({"method": "fedavg", "server_lr": 0.5}, "server_lr"),
        ({"method": "fedavgm", "nesterov": True}, "nesterov"),
        ({"method": "fedavgm", "momentum": 1.0}, "momentum"),
        ({"method": "fedavgm", "momentum": -0.1}, "momentum"),
        ({"method": "fedavgm", "server_lr": 0}, "server_lr"),
        ({"method": "fedadam", "beta1": 1.0}, "beta1"),
        ({"method": "fedadam", "beta2": 1.5}, "beta2"),
        ({"method": "fedyogi", "tau": 0}, "tau"),
        ({"method": "fedyogi", "server_lr": float("inf")}, "server_lr"),
        ({"method": "trimmed_mean", "trim_ratio": 0.5}, "trim_ratio"),
        ({"method": "trimmed_mean", "trim_ratio": -0.1}, "trim_ratio"),
        ({"method": "median", "trim_ratio": 0.1}, "trim_ratio"),
        ({**DP, "clip_norm": 0}, "clip_norm"),
        ({**DP, "clip_norm": float("nan")}, "clip_norm"),
        ({**DP, "noise_multiplier": -1}, "noise_multiplier"),
        ({**DP, "target_epsilon": 0}, "target_epsilon"),
        ({**DP, "delta": 0}, "delta"),
        ({**DP, "delta": 1}, "delta"),
        ({**DP, "sampling_rate": 0}, "sampling_rate"),
        ({**DP, "sampling_rate": 1.01}, "sampling_rate"),
        ({"method": "dp_fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0}, "target_epsilon"),
        ({**DP, "epsilon": 3}, "epsilon"),
    ],
)
def test_config_refuses_unknown_fields_and_out_of_range_values(data: Any, field: str) -> None:
    # Execute
    with pytest.raises(ValidationError) as caught:
        parse_aggregation_config(data)

    # Assert
    assert field in str(caught.value)


def test_configs_are_frozen_and_describe_their_fields() -> None:
    # Prepare
    config = FedAvgM()

    # Execute / Assert
    with pytest.raises(ValidationError):
        config.momentum = 0.5
    schema = DPFedAvg.model_json_schema()
    assert "Poisson" in schema["properties"]["sampling_rate"]["description"]


def test_every_config_method_has_an_aggregator() -> None:
    # Prepare
    union = typing.get_args(AggregationConfig)[0]
    methods = {model.model_fields["method"].default for model in typing.get_args(union)}

    # Assert
    assert methods == set(AGGREGATORS)


# --- weighted FedAvg -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "values", "expected_mean"),
    [
        ([1], [2.0], 2.0),
        ([1, 1], [1.0, 3.0], 2.0),
        ([1, 3], [1.0, 5.0], 4.0),
        ([2, 0, 6], [-4.0, 100.0, 4.0], 2.0),
        ([10, 30, 60], [0.5, 1.5, -1.0], -0.1),
    ],
)
def test_fedavg_is_params_minus_the_sample_weighted_mean(
    weights: list[int], values: list[float], expected_mean: float
) -> None:
    # Prepare
    params = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor(0.25)}
    diffs = [
        MemoryDiff({"w": torch.full((2, 2), value), "b": torch.tensor(value)}, weight)
        for weight, value in zip(weights, values, strict=True)
    ]

    # Execute
    result = aggregate(FedAvg(), params, diffs)

    # Assert
    torch.testing.assert_close(result.params["w"], params["w"] - expected_mean)
    torch.testing.assert_close(result.params["b"], params["b"] - expected_mean)
    assert (result.state, result.epsilon) == ({}, None)
    assert (result.num_diffs, result.total_samples) == (len(diffs), sum(weights))


def test_fedavg_matches_numpy_weighted_average_on_random_data(tmp_path: Path) -> None:
    # Prepare
    params = random_tensors(1000)
    diffs = memory_diffs(25)

    # Execute
    from_memory = aggregate(FedAvg(), params, diffs)
    from_files = aggregate(FedAvg(), params, to_files(diffs, tmp_path))

    # Assert
    for name, param in params.items():
        expected = param.double().numpy() - numpy_weighted_mean(diffs, name)
        np.testing.assert_allclose(from_memory.params[name].numpy(), expected, atol=1e-6)
        assert torch.equal(from_files.params[name], from_memory.params[name])


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
)
def test_fedavg_keeps_each_parameter_dtype(dtype: torch.dtype) -> None:
    # Prepare
    params = {"x": torch.tensor([10, 20, 30]).to(dtype), "y": torch.ones(2, dtype=torch.float32)}
    diffs = [MemoryDiff({"x": torch.tensor([1, 2, 3]).to(dtype), "y": torch.ones(2)}, 1)] * 2

    # Execute
    result = aggregate(FedAvg(), params, diffs)

    # Assert
    assert result.params["x"].dtype == dtype
    assert result.params["x"].tolist() == [9, 18, 27]
    assert result.params["y"].dtype == torch.float32


def test_integer_buffers_are_rounded_not_truncated() -> None:
    # Prepare: the mean diff of a step counter is 0.75, so 10 - 0.75 = 9.25 rounds to 9
    params = {"steps": torch.tensor(10)}
    diffs = [MemoryDiff({"steps": torch.tensor(value)}, 1) for value in (1, 1, 1, 0)]

    # Execute
    result = aggregate(FedAvg(), params, diffs)

    # Assert
    assert result.params["steps"].item() == 9


def test_weighted_mean_accumulates_one_diff_at_a_time() -> None:
    # Prepare
    template = {"w": torch.zeros(3)}
    accumulator = WeightedMean(template)

    # Execute
    accumulator.add({"w": torch.tensor([1.0, 2.0, 3.0])}, num_samples=1)
    accumulator.add(MemoryDiff({"w": torch.tensor([3.0, 2.0, 1.0])}, num_samples=3))
    mean = accumulator.result()

    # Assert
    assert (accumulator.count, accumulator.total_weight) == (2, 4)
    torch.testing.assert_close(mean["w"], torch.tensor([2.5, 2.0, 1.5]))
    assert accumulator.result(torch.float64)["w"].dtype == torch.float64


@pytest.mark.parametrize(
    ("weights", "message"),
    [([], "no diffs were added"), ([0, 0], "total weight is 0")],
)
def test_weighted_mean_refuses_an_undefined_mean(weights: list[int], message: str) -> None:
    # Prepare
    accumulator = WeightedMean({"w": torch.zeros(2)})
    for weight in weights:
        accumulator.add({"w": torch.ones(2)}, num_samples=weight)

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        accumulator.result()


@pytest.mark.parametrize("num_samples", [-1, True, 1.5, None])
def test_weighted_mean_refuses_bad_weights(num_samples: Any) -> None:
    # Prepare
    accumulator = WeightedMean({"w": torch.zeros(2)})

    # Execute / Assert
    with pytest.raises((ValueError, TypeError), match="num_samples"):
        accumulator.add({"w": torch.ones(2)}, num_samples=num_samples)


def test_a_failed_add_leaves_the_sum_unusable_instead_of_silently_wrong() -> None:
    # Prepare: the second tensor is non-finite, so the first was already added when it fails
    template = {"a": torch.zeros(2), "b": torch.zeros(2)}
    total = StreamingSum(template)
    poisoned = {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}

    # Execute
    with pytest.raises(ValueError, match="'b' has NaN or infinite values"):
        total.add(poisoned)

    # Assert
    with pytest.raises(RuntimeError, match="inconsistent"):
        total.add({"a": torch.ones(2), "b": torch.ones(2)})


@pytest.mark.parametrize(
    ("tensor", "finite"),
    [
        (torch.ones(3), True),
        (torch.full((10,), 3e38), True),  # the float32 sum overflows, the values do not
        (torch.full((10,), 6e4, dtype=torch.float16), True),
        (torch.full((3,), 1e308, dtype=torch.float64), True),
        (torch.tensor([1, 2]), True),
        (torch.tensor([1.0, math.nan]), False),
        (torch.tensor([math.inf, -math.inf]), False),
        (torch.tensor([-math.inf], dtype=torch.bfloat16), False),
        (torch.tensor([1 + 1j, complex(math.nan, 0)]), False),
    ],
)
def test_all_finite_is_exact_even_when_the_sum_overflows(
    tensor: torch.Tensor, finite: bool
) -> None:
    assert all_finite(tensor) is finite


# --- errors from aggregate -----------------------------------------------------------------------

GOOD = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


@pytest.mark.parametrize("config", [FedAvg(), FedAdam(), Median(), TrimmedMean()])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"w": torch.zeros(2, 3)}, r"diff 1 \(MemoryDiff.*\) lacks tensor 'b'"),
        ({**GOOD, "extra": torch.zeros(1)}, "diff 1 .* has unexpected tensor 'extra'"),
        (
            {"w": torch.zeros(3, 2), "b": torch.zeros(3)},
            r"'w' has shape \[3, 2\], expected \[2, 3\]",
        ),
        ({"w": torch.zeros(2, 3), "b": torch.zeros(())}, r"'b' has shape \[\], expected \[3\]"),
        ({"w": torch.zeros(2, 3), "b": torch.tensor([0, math.inf, 0])}, "'b' has NaN or infinite"),
        ({"w": torch.full((2, 3), math.nan), "b": torch.zeros(3)}, "'w' has NaN or infinite"),
    ],
)
def test_a_diff_that_does_not_fit_the_model_is_refused_by_name(
    config: AggregationConfig, bad: Tensors, message: str
) -> None:
    # Prepare
    diffs = [MemoryDiff(GOOD, 1), MemoryDiff(bad, 1), MemoryDiff(GOOD, 1)]

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        aggregate(config, GOOD, diffs)


@pytest.mark.parametrize(
    ("params", "diffs", "error", "message"),
    [
        (GOOD, [], ValueError, "no diffs to aggregate"),
        ({}, [MemoryDiff(GOOD, 1)], ValueError, "params must be a non-empty mapping"),
        ({"w": [0.0, 1.0]}, [MemoryDiff(GOOD, 1)], TypeError, "'w' is a list"),
        ({"m": torch.ones(2, dtype=torch.bool)}, [], ValueError, "bool tensor"),
        (GOOD, [GOOD], TypeError, "diff 0 is a dict, not a DiffSource"),
        (GOOD, [MemoryDiff(GOOD, 0)], ValueError, "total weight is 0"),
    ],
)
def test_aggregate_refuses_inputs_it_cannot_average(
    params: Any, diffs: Any, error: type[Exception], message: str
) -> None:
    # Execute / Assert
    with pytest.raises(error, match=message):
        aggregate(FedAvg(), params, diffs)


def test_aggregate_refuses_a_negative_cycle_count() -> None:
    with pytest.raises(ValueError, match="cycles_done"):
        aggregate(FedAvg(), GOOD, [MemoryDiff(GOOD, 1)], cycles_done=-1)


# --- server optimisers ---------------------------------------------------------------------------


def run_cycles(
    config: AggregationConfig, params: Tensors, cycles: list[list[MemoryDiff]]
) -> tuple[Tensors, Tensors]:
    """Aggregate cycle after cycle, storing the state as safetensors bytes in between, as a Node does."""
    stored = save({})
    for diffs in cycles:
        result = aggregate(config, params, diffs, load(stored))
        params, stored = result.params, save(result.state)
    return params, load(stored)


def reference_adaptive(
    x: np.ndarray, mean_diffs: list[np.ndarray], config: FedAdam | FedYogi
) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, written out in numpy with Delta = -mean_diff."""
    m = np.zeros_like(x)
    v = np.full_like(x, config.tau**2)
    for mean_diff in mean_diffs:
        delta = -mean_diff
        m = config.beta1 * m + (1 - config.beta1) * delta
        if isinstance(config, FedYogi):
            v = v - (1 - config.beta2) * delta**2 * np.sign(v - delta**2)
        else:
            v = config.beta2 * v + (1 - config.beta2) * delta**2
        x = x + config.server_lr * m / (np.sqrt(v) + config.tau)
    return x


@pytest.mark.parametrize(
    "config",
    [
        FedAdam(),
        FedAdam(server_lr=0.5, beta1=0.5, beta2=0.9, tau=0.1),
        FedYogi(),
        FedYogi(server_lr=0.3, beta1=0.0, beta2=0.5, tau=0.05),
    ],
    ids=["adam", "adam-tuned", "yogi", "yogi-tuned"],
)
def test_adaptive_optimisers_follow_reddi_et_al_for_two_cycles(
    config: FedAdam | FedYogi,
) -> None:
    # Prepare
    params = random_tensors(99)
    cycles = [memory_diffs(4, seed=0), memory_diffs(3, seed=50)]

    # Execute
    new_params, state = run_cycles(config, params, cycles)

    # Assert
    for name, param in params.items():
        mean_diffs = [numpy_weighted_mean(diffs, name) for diffs in cycles]
        expected = reference_adaptive(param.double().numpy(), mean_diffs, config)
        np.testing.assert_allclose(new_params[name].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert new_params[name].dtype == torch.float32
    assert set(state) == {f"{buffer}/{name}" for buffer in ("m", "v") for name in params}
    assert all(value.dtype == torch.float32 for value in state.values())


def test_fedadam_first_step_by_hand() -> None:
    # Prepare: Delta = -mean_diff = 1, so m = 0.1 and v = 0.99 * tau^2 + 0.01
    config = FedAdam(server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    diffs = [MemoryDiff({"x": torch.tensor([-1.0], dtype=torch.float64)}, 5)]
    params = {"x": torch.tensor([0.0], dtype=torch.float64)}

    # Execute
    result = aggregate(config, params, diffs)

    # Assert
    v = 0.99 * 1e-6 + 0.01
    assert result.params["x"].item() == pytest.approx(0.01 * 0.1 / (math.sqrt(v) + 1e-3))
    assert result.state["m/x"].item() == pytest.approx(0.1)
    assert result.state["v/x"].item() == pytest.approx(v)


def test_fedavgm_without_momentum_and_unit_lr_is_fedavg() -> None:
    # Prepare
    params = random_tensors(7)
    cycles = [memory_diffs(5, seed=10), memory_diffs(2, seed=20), memory_diffs(3, seed=30)]

    # Execute
    with_momentum_zero, state = run_cycles(FedAvgM(server_lr=1.0, momentum=0.0), params, cycles)
    plain, _ = run_cycles(FedAvg(), params, cycles)

    # Assert
    for name in params:
        torch.testing.assert_close(with_momentum_zero[name], plain[name])
    assert set(state) == {f"momentum/{name}" for name in params}


def test_fedavgm_accumulates_momentum_across_cycles() -> None:
    # Prepare: the same mean diff d twice: m1 = d, m2 = 0.5 * d + d; x2 = x0 - 2 * (m1 + m2)
    config = FedAvgM(server_lr=2.0, momentum=0.5)
    params = {"x": torch.tensor([1.0, -1.0])}
    diffs = [MemoryDiff({"x": torch.tensor([0.1, 0.2])}, 3)]

    # Execute
    new_params, state = run_cycles(config, params, [diffs, diffs])

    # Assert
    d = torch.tensor([0.1, 0.2])
    torch.testing.assert_close(new_params["x"], params["x"] - 2 * (d + 1.5 * d))
    torch.testing.assert_close(state["momentum/x"], 1.5 * d)


@pytest.mark.parametrize("config", [FedAvgM(), FedAdam(), FedYogi()])
def test_optimisers_do_not_modify_their_inputs(config: AggregationConfig) -> None:
    # Prepare: float64 everywhere, where an in-place op would not even need a copy
    params = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    diffs = [MemoryDiff({"x": torch.tensor([0.5, -0.5], dtype=torch.float64)}, 1)]
    state = aggregate(config, params, diffs).state
    state = {key: value.double() for key, value in state.items()}
    before = ({k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in state.items()})

    # Execute
    aggregate(config, params, diffs, state)

    # Assert
    assert all(torch.equal(params[k], before[0][k]) for k in params)
    assert all(torch.equal(state[k], before[1][k]) for k in state)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"m/x": torch.zeros(2)}, "lacks 'v/x'"),
        ({"m/x": torch.zeros(2), "v/x": torch.zeros(3)}, r"v/x has shape \[3\], expected \[2\]"),
        ({"m/x": torch.zeros(2), "v/x": torch.ones(2), "momentum/x": torch.ones(2)}, "momentum/x"),
    ],
)
def test_a_corrupt_optimiser_state_is_refused(state: Tensors, message: str) -> None:
    # Prepare
    params = {"x": torch.zeros(2)}

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        aggregate(FedAdam(), params, [MemoryDiff({"x": torch.ones(2)}, 1)], state)


# --- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [FedAvg(), FedAvgM(), FedYogi()], ids=lambda config: config.method
)
def test_streaming_methods_hold_one_diff_tensor_at_a_time(
    config: AggregationConfig, tmp_path: Path
) -> None:
    # Prepare
    ledger = Ledger()
    params = random_tensors(1)
    diffs = [TrackedDiff(diff, ledger) for diff in to_files(memory_diffs(30), tmp_path)]

    # Execute
    aggregate(config, params, diffs)

    # Assert: never more than the largest tensor of one diff alive, nothing kept afterwards
    assert ledger.peak == max(tensor.numel() for tensor in params.values())
    assert ledger.live == 0


PEAK_MEMORY_SCRIPT = """
import json, resource, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from pygrid.aggregation import FedAvg, FileDiff, Median, aggregate

folder, elements = Path(sys.argv[1]), int(sys.argv[2])
params = {"w": torch.zeros(elements // 1000, 1000), "b": torch.zeros(1000)}
paths = []
for index in range(4):
    path = folder / f"d{index}.safetensors"
    save_file({name: torch.randn(p.shape) for name, p in params.items()}, path)
    paths.append(path)

def peak_growth_mb(run):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

def diffs(count):
    return [FileDiff(paths[i % len(paths)], 10 + i) for i in range(count)]

aggregate(FedAvg(), params, diffs(2))  # warm up: imports, allocator, thread pools
aggregate(Median(), params, diffs(2), chunk_elements=2**20)
print(json.dumps({
    "fedavg": peak_growth_mb(lambda: aggregate(FedAvg(), params, diffs(200))),
    "median": peak_growth_mb(
        lambda: aggregate(Median(), params, diffs(50), chunk_elements=2**20)
    ),
}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units are Linux's")
def test_peak_memory_is_o_model_not_o_diffs_times_model(tmp_path: Path) -> None:
    # Prepare: a 1M-parameter model (4 MB): 200 diffs held at once would be 800 MB (1.6 GB in
    # float64), a median over 50 diffs without chunks 400 MB plus the sort's 800 MB
    elements = 1_000_000

    # Execute: in a fresh process, so that the peak is this aggregation's, not an earlier test's
    completed = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(tmp_path), str(elements)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Assert
    assert completed.returncode == 0, completed.stderr
    growth = json.loads(completed.stdout.strip().splitlines()[-1])
    assert growth["fedavg"] < 100, growth
    assert growth["median"] < 100, growth


def test_aggregators_never_modify_the_old_checkpoint() -> None:
    # Prepare
    params = random_tensors(3)
    before = {name: tensor.clone() for name, tensor in params.items()}
    configs: list[Callable[[], AggregationConfig]] = [FedAvg, FedAvgM, FedAdam, Median]

    # Execute
    for make in configs:
        aggregate(make(), params, memory_diffs(3))

    # Assert
    assert all(torch.equal(params[name], before[name]) for name in params)
