"""DP-FedAvg: clipping, calibrated noise, and epsilon accounting over cycles with dp-accounting."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant

from pygrid.aggregation import (
    DPFedAvg,
    MemoryDiff,
    PrivacyBudgetExceeded,
    aggregate,
    epsilon_after,
    max_cycles,
    would_exceed,
)
from pygrid.aggregation.dp import clip_factor, diff_norm, dp_mean, noise_std


def no_noise(clip_norm: float) -> DPFedAvg:
    return DPFedAvg(clip_norm=clip_norm, noise_multiplier=0.0, target_epsilon=1.0)


def independent_epsilon(cycles: int, noise: float, rate: float, delta: float) -> float:
    """dp-accounting's RDP epsilon for ``cycles`` Poisson-subsampled Gaussian releases."""
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    accountant.compose(event, count=cycles)
    return float(accountant.get_epsilon(delta))


# --- clipping ------------------------------------------------------------------------------------


def test_a_huge_diff_contributes_at_most_clip_norm_over_n() -> None:
    # Prepare: one device sends a diff of norm 1e6, three send nothing
    huge = torch.zeros(100)
    huge[7] = 1e6
    diffs = [MemoryDiff({"w": huge}, 1)] + [MemoryDiff({"w": torch.zeros(100)}, 1)] * 3

    # Execute
    mean = dp_mean({"w": torch.zeros(100)}, diffs, no_noise(clip_norm=2.0))

    # Assert
    assert float(torch.linalg.vector_norm(mean["w"])) == pytest.approx(2.0 / 4)
    assert float(mean["w"][7]) == pytest.approx(0.5)


def test_clipping_uses_the_norm_over_all_tensors_jointly() -> None:
    # Prepare: norms 3 and 4 per tensor, 5 jointly; clipped to 1, both shrink by 1/5
    diff = MemoryDiff({"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0], [4.0]])}, 1)
    template = {"a": torch.zeros(2), "b": torch.zeros(2, 1)}

    # Execute
    mean = dp_mean(template, [diff], no_noise(clip_norm=1.0))

    # Assert
    assert diff_norm(diff) == pytest.approx(5.0)
    torch.testing.assert_close(mean["a"], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(mean["b"], torch.tensor([[0.0], [0.8]]))


@pytest.mark.parametrize(
    ("values", "clip_norm", "factor"),
    [
        ([0.0, 0.0], 1.0, 1.0),
        ([0.3, 0.4], 1.0, 1.0),
        ([3.0, 4.0], 5.0, 1.0),
        ([3.0, 4.0], 1.0, 0.2),
    ],
)
def test_clip_factor_only_ever_shrinks(
    values: list[float], clip_norm: float, factor: float
) -> None:
    assert clip_factor(MemoryDiff({"w": torch.tensor(values)}, 1), clip_norm) == pytest.approx(
        factor
    )


def test_the_mean_is_unweighted_whatever_num_samples_claims() -> None:
    # Prepare
    diffs = [
        MemoryDiff({"w": torch.tensor([0.1])}, 1),
        MemoryDiff({"w": torch.tensor([0.3])}, 10**6),
    ]

    # Execute
    mean = dp_mean({"w": torch.zeros(1)}, diffs, no_noise(clip_norm=1.0))

    # Assert
    torch.testing.assert_close(mean["w"], torch.tensor([0.2]))


def test_a_non_finite_diff_is_refused() -> None:
    diffs = [MemoryDiff({"w": torch.tensor([math.nan, 1.0])}, 1)]
    with pytest.raises(ValueError, match="NaN or infinite"):
        dp_mean({"w": torch.zeros(2)}, diffs, no_noise(clip_norm=1.0))


# --- noise ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("noise_multiplier", "clip_norm", "num_diffs"), [(1.3, 0.7, 5), (0.5, 2.0, 1), (4.0, 0.1, 40)]
)
def test_noise_std_is_noise_multiplier_times_clip_norm_over_n(
    noise_multiplier: float, clip_norm: float, num_diffs: int
) -> None:
    # Prepare: zero diffs, so the release is the noise alone
    config = DPFedAvg(clip_norm=clip_norm, noise_multiplier=noise_multiplier, target_epsilon=1)
    template = {"big": torch.zeros(1000, 1000), "small": torch.zeros(3)}
    diffs = [MemoryDiff({"big": torch.zeros(1000, 1000), "small": torch.zeros(3)}, 1)] * num_diffs

    # Execute
    noise = dp_mean(template, diffs, config, seed=1234)["big"].double()

    # Assert
    expected = noise_multiplier * clip_norm / num_diffs
    assert noise_std(config, num_diffs) == pytest.approx(expected)
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)
    assert abs(float(noise.mean())) < 5 * expected / 1000  # 5 standard errors of the mean


def test_noise_is_reproducible_only_with_an_explicit_seed() -> None:
    # Prepare
    config = DPFedAvg(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=1)
    template = {"w": torch.zeros(64)}
    diffs = [MemoryDiff({"w": torch.zeros(64)}, 1)]

    # Execute
    seeded = [dp_mean(template, diffs, config, seed=7)["w"] for _ in range(2)]
    unseeded = [dp_mean(template, diffs, config)["w"] for _ in range(2)]

    # Assert
    assert torch.equal(seeded[0], seeded[1])
    assert not torch.equal(unseeded[0], unseeded[1])
    assert not torch.equal(unseeded[0], seeded[0])


# --- accounting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("noise", "rate", "delta", "cycles"),
    [(1.1, 1.0, 1e-5, 1), (1.1, 1.0, 1e-5, 10), (1.1, 0.01, 1e-5, 1000), (4.0, 0.1, 1e-6, 50)],
)
def test_epsilon_after_is_dp_accountings_rdp_epsilon(
    noise: float, rate: float, delta: float, cycles: int
) -> None:
    # Prepare
    config = DPFedAvg(
        clip_norm=1, noise_multiplier=noise, target_epsilon=1, delta=delta, sampling_rate=rate
    )

    # Execute
    epsilon = epsilon_after(cycles, config)

    # Assert
    assert epsilon == pytest.approx(independent_epsilon(cycles, noise, rate, delta), rel=1e-9)


def test_epsilon_grows_with_cycles() -> None:
    # Prepare
    config = DPFedAvg(clip_norm=1, noise_multiplier=1.0, target_epsilon=1, sampling_rate=0.05)

    # Execute
    epsilons = [epsilon_after(cycles, config) for cycles in (0, 1, 2, 5, 10, 100)]

    # Assert
    assert epsilons[0] == 0.0
    assert all(earlier < later for earlier, later in zip(epsilons, epsilons[1:], strict=False))


def test_without_noise_epsilon_is_infinite_and_no_cycle_fits() -> None:
    # Prepare
    config = no_noise(clip_norm=1.0)

    # Execute / Assert
    assert epsilon_after(1, config) == math.inf
    assert would_exceed(0, config)
    assert max_cycles(config) == 0


@pytest.mark.parametrize(
    ("noise", "rate", "target"), [(1.1, 1.0, 10.0), (2.0, 1.0, 5.0), (1.0, 0.1, 2.0)]
)
def test_would_exceed_flips_at_the_last_cycle_within_the_target(
    noise: float, rate: float, target: float
) -> None:
    # Prepare: find the last cycle within the target by walking the accountant, cycle by cycle
    config = DPFedAvg(
        clip_norm=1, noise_multiplier=noise, target_epsilon=target, sampling_rate=rate
    )
    accountant, last_within = RdpAccountant(), 0
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    while True:
        accountant.compose(event)
        if accountant.get_epsilon(config.delta) > target:
            break
        last_within += 1

    # Execute
    flips = [would_exceed(done, config) for done in range(last_within + 2)]

    # Assert: cycles 1..last_within may run, cycle last_within + 1 may not
    assert flips == [False] * last_within + [True, True]
    assert max_cycles(config) == last_within


def test_aggregate_reports_the_epsilon_spent_by_this_cycle() -> None:
    # Prepare
    config = DPFedAvg(clip_norm=1.0, noise_multiplier=1.1, target_epsilon=10.0)
    params = {"w": torch.ones(10)}
    diffs = [MemoryDiff({"w": torch.full((10,), 0.01)}, 5) for _ in range(3)]

    # Execute
    first = aggregate(config, params, diffs, seed=3)
    third = aggregate(config, first.params, diffs, cycles_done=2, seed=3)

    # Assert
    assert first.epsilon == pytest.approx(epsilon_after(1, config))
    assert third.epsilon == pytest.approx(epsilon_after(3, config))
    assert (first.num_diffs, first.total_samples, first.state) == (3, 15, {})
    # the same noise the seed gives, subtracted like the mean diff: new = params - (mean + noise)
    noise = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = params["w"] - (0.01 + noise * noise_std(config, 3))
    torch.testing.assert_close(first.params["w"], expected.float())


def test_aggregate_refuses_a_cycle_past_the_budget() -> None:
    # Prepare
    config = DPFedAvg(clip_norm=1.0, noise_multiplier=1.1, target_epsilon=10.0)
    last = max_cycles(config)
    diffs = [MemoryDiff({"w": torch.zeros(2)}, 1)]

    # Execute
    aggregate(config, {"w": torch.zeros(2)}, diffs, cycles_done=last - 1)
    with pytest.raises(
        PrivacyBudgetExceeded, match=f"cycle {last + 1} would spend epsilon"
    ) as caught:
        aggregate(config, {"w": torch.zeros(2)}, diffs, cycles_done=last)

    # Assert
    assert f"fits {last} cycles" in str(caught.value)
