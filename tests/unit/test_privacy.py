"""pygrid.privacy: DP-SGD accounting and the noise of private statistics, against dp-accounting."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from pygrid.errors import InvalidInput
from pygrid.privacy import (
    PrivacyError,
    QueryNoise,
    dpsgd,
    gaussian_sigma,
    laplace_scale,
    split_budget,
)
from pygrid.privacy import mechanisms as m


def rdp_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    """dp-accounting's RDP epsilon of ``steps`` Poisson-subsampled Gaussian steps."""
    accountant = RdpAccountant()
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    return float(accountant.get_epsilon(delta))


# --- DP-SGD: sampling rate and steps ---------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "rows", "rate"), [(64, 1500, 64 / 1500), (1500, 1500, 1.0), (2000, 1500, 1.0)]
)
def test_sample_rate_is_the_expected_share_of_rows_in_a_batch(
    batch_size: int, rows: int, rate: float
) -> None:
    assert dpsgd.sample_rate(batch_size, rows) == pytest.approx(rate)


@pytest.mark.parametrize(
    ("epochs", "batch_size", "rows", "steps"),
    [(10, 64, 1500, 240), (1, 1500, 1500, 1), (3, 7, 20, 9)],
)
def test_steps_are_epochs_times_batches_per_epoch(
    epochs: int, batch_size: int, rows: int, steps: int
) -> None:
    assert dpsgd.steps(epochs, batch_size, rows) == steps


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dpsgd.sample_rate(0, 10), "batch_size"),
        (lambda: dpsgd.sample_rate(10, 0), "rows"),
        (lambda: dpsgd.steps(0, 10, 10), "epochs"),
        (lambda: dpsgd.epsilon(1.0, 1.5, 10, 1e-5), "sample_rate"),
        (lambda: dpsgd.epsilon(1.0, 0.1, 10, 0.0), "delta"),
        (lambda: dpsgd.epsilon(-1.0, 0.1, 10, 1e-5), "noise_multiplier"),
        (lambda: dpsgd.noise_multiplier(0.0, 1e-5, 0.1, 10), "epsilon"),
        (lambda: dpsgd.noise_multiplier(math.inf, 1e-5, 0.1, 10), "epsilon"),
    ],
)
def test_invalid_accounting_inputs_are_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(PrivacyError, match=message):
        call()  # type: ignore[operator]


# --- DP-SGD: epsilon --------------------------------------------------------------------------


def test_epsilon_is_the_rdp_accountants() -> None:
    # Prepare
    sigma, rate, steps, delta = 1.1, 256 / 60000, 5000, 1e-5

    # Execute
    found = dpsgd.epsilon(sigma, rate, steps, delta)

    # Assert
    assert found == pytest.approx(rdp_epsilon(sigma, rate, steps, delta))


def test_epsilon_falls_with_noise_and_grows_with_steps_and_sampling() -> None:
    base = dpsgd.epsilon(1.5, 0.1, 100, 1e-5)

    assert dpsgd.epsilon(3.0, 0.1, 100, 1e-5) < base
    assert dpsgd.epsilon(1.5, 0.1, 400, 1e-5) > base
    assert dpsgd.epsilon(1.5, 0.3, 100, 1e-5) > base
    assert dpsgd.epsilon(1.5, 0.1, 100, 1e-3) < base


def test_no_steps_cost_nothing_and_no_noise_costs_everything() -> None:
    assert dpsgd.epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert dpsgd.epsilon(0.0, 0.1, 10, 1e-5) == math.inf


# --- DP-SGD: calibrating the noise ------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "delta", "rate", "steps"),
    [
        (3.0, 1e-5, 256 / 1500, 60),
        (1.0, 1e-5, 0.01, 1000),
        (8.0, 1e-6, 1.0, 5),
    ],
)
def test_noise_multiplier_is_the_smallest_that_meets_the_target(
    target: float, delta: float, rate: float, steps: int
) -> None:
    # Execute
    sigma = dpsgd.noise_multiplier(target, delta, rate, steps)

    # Assert: within the target, and 0.1 % less noise would not be
    assert rdp_epsilon(sigma, rate, steps, delta) <= target
    assert rdp_epsilon(sigma * 0.999, rate, steps, delta) > target
    assert dpsgd.epsilon(sigma, rate, steps, delta) == pytest.approx(target, rel=1e-2)


def test_a_smaller_epsilon_needs_more_noise() -> None:
    sigmas = [dpsgd.noise_multiplier(eps, 1e-5, 0.05, 200) for eps in (8.0, 3.0, 1.0)]

    assert sigmas == sorted(sigmas)
    assert len(set(sigmas)) == 3


def test_an_unreachable_epsilon_is_refused_with_a_422() -> None:
    # Prepare: full batches, ten thousand steps, a tiny epsilon
    with pytest.raises(PrivacyError, match="out of reach") as caught:
        dpsgd.noise_multiplier(1e-4, 1e-5, 1.0, 10_000)

    assert isinstance(caught.value, InvalidInput)
    assert caught.value.status == 422


# --- mechanisms: Laplace and Gaussian calibration ------------------------------------------------


def test_laplace_scale_is_sensitivity_over_epsilon() -> None:
    assert laplace_scale(1.0, 0.5) == pytest.approx(2.0)
    assert laplace_scale(100.0, 4.0) == pytest.approx(25.0)
    assert laplace_scale(0.0, 1.0) == 0.0


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (1.0, 1e-5), (5.0, 1e-3)])
def test_gaussian_sigma_is_exactly_calibrated_by_dp_accounting(
    epsilon: float, delta: float
) -> None:
    # Execute
    sigma = gaussian_sigma(1.0, epsilon, delta)

    # Assert: the exact (epsilon, delta) curve of the Gaussian mechanism and the PLD accountant
    # agree that sigma meets the target, with practically nothing to spare
    assert dp_accounting.get_epsilon_gaussian(sigma, delta) <= epsilon
    assert dp_accounting.get_epsilon_gaussian(sigma * 0.999, delta) > epsilon
    pld = PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(dp_accounting.GaussianDpEvent(sigma))
    assert pld.get_epsilon(delta) == pytest.approx(epsilon, rel=1e-2)


def test_gaussian_sigma_scales_with_sensitivity_and_beats_the_classic_formula() -> None:
    # Prepare
    epsilon, delta = 0.5, 1e-5
    classic = math.sqrt(2 * math.log(1.25 / delta)) / epsilon

    # Execute
    unit, scaled = gaussian_sigma(1.0, epsilon, delta), gaussian_sigma(7.0, epsilon, delta)

    # Assert
    assert scaled == pytest.approx(7 * unit)
    assert unit < classic


def test_split_budget_shares_evenly_and_adds_back_up() -> None:
    eps, delta = split_budget(3.0, 1e-5, 6)

    assert eps == pytest.approx(0.5)
    assert delta == pytest.approx(1e-5 / 6)
    assert split_budget(2.0, None, 4) == (0.5, None)
    assert 6 * eps == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: laplace_scale(1.0, 0.0), "epsilon"),
        (lambda: laplace_scale(-1.0, 1.0), "sensitivity"),
        (lambda: gaussian_sigma(1.0, 1.0, 0.0), "delta"),
        (lambda: split_budget(1.0, None, 0), "queries"),
        (lambda: QueryNoise("gaussian", 1.0), "delta"),
        (lambda: QueryNoise("exponential", 1.0), "unknown mechanism"),
        (lambda: m.sum_sensitivity(1.0, 0.0), "lower <= upper"),
    ],
)
def test_invalid_mechanism_inputs_are_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(PrivacyError, match=message):
        call()  # type: ignore[operator]


# --- mechanisms: the noise itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "upper", "sensitivity"), [(0.0, 100.0, 100.0), (-5.0, 2.0, 5.0), (-3.0, -1.0, 3.0)]
)
def test_sum_sensitivity_is_the_largest_magnitude_one_row_can_add(
    lower: float, upper: float, sensitivity: float
) -> None:
    assert m.sum_sensitivity(lower, upper) == sensitivity


def test_laplace_noise_on_a_sum_has_the_calibrated_scale() -> None:
    # Prepare: a fixed seed, so the check is deterministic; Laplace(b) has std sqrt(2) * b
    rng = np.random.default_rng(7)
    values = np.array([10.0, 250.0, -3.0, 40.0])  # 250 and -3 are clipped to [0, 100]
    noise = QueryNoise("laplace", 0.5)

    # Execute
    draws = np.array([m.noisy_sum(values, 0.0, 100.0, noise, rng) for _ in range(4000)])

    # Assert
    exact = 10.0 + 100.0 + 0.0 + 40.0
    assert draws.mean() == pytest.approx(exact, abs=10.0)
    assert draws.std() == pytest.approx(math.sqrt(2) * 100.0 / 0.5, rel=0.08)


def test_gaussian_noise_on_a_count_has_the_calibrated_sigma() -> None:
    rng = np.random.default_rng(11)
    noise = QueryNoise("gaussian", 1.0, 1e-5)

    draws = np.array([m.noisy_count(1000, noise, rng) for _ in range(4000)])

    assert draws.mean() == pytest.approx(1000.0, abs=0.5)
    assert draws.std() == pytest.approx(gaussian_sigma(1.0, 1.0, 1e-5), rel=0.08)


def test_a_noisy_histogram_keeps_exact_public_edges_and_noises_every_bin() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    values = np.array([0.0, 0.5, 1.5, 2.0, 9.0])  # 9.0 is clipped into the last bin

    # Execute
    exact, edges = m.histogram(values, 0.0, 2.0, 4)
    runs = [
        m.noisy_histogram(values, 0.0, 2.0, 4, QueryNoise("laplace", 1.0), rng) for _ in range(3000)
    ]

    # Assert
    np.testing.assert_array_equal(exact, [1.0, 1.0, 0.0, 3.0])
    np.testing.assert_array_equal(edges, [0.0, 0.5, 1.0, 1.5, 2.0])
    counts = np.stack([run[0] for run in runs])
    assert all(np.array_equal(run[1], edges) for run in runs)
    np.testing.assert_allclose(counts.mean(axis=0), exact, atol=0.15)
    np.testing.assert_allclose(counts.std(axis=0), math.sqrt(2), rtol=0.08)


def test_a_noisy_mean_divides_a_noisy_sum_by_a_noisy_count() -> None:
    # Prepare: a generous budget, so the noise is small against the values
    rng = np.random.default_rng(5)
    values = np.full(10_000, 3.0)

    # Execute
    mean = m.noisy_mean(values, 0.0, 4.0, QueryNoise("laplace", 10.0), rng)

    # Assert
    assert mean == pytest.approx(3.0, rel=1e-2)
