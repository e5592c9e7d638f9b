"""DP-SGD accounting: how much noise a training job needs, and what epsilon it then costs.

DP-SGD (Abadi et al. 2016) as the Worker runs it: each of ``steps`` steps takes every row
independently with probability ``sample_rate`` (Poisson sampling), clips each sampled row's
gradient to ``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``
to their sum. Each step is then one Poisson-subsampled Gaussian mechanism, and a job is ``steps``
of them composed; Google's ``dp-accounting`` RDP accountant turns that into epsilon at ``delta``.
The Node calls `noise_multiplier` at submission and records `epsilon` of the result: that is what
the release charges.
"""

from __future__ import annotations

import functools
import math

from pygrid.privacy.mechanisms import PrivacyError

__all__ = ["MAX_NOISE_MULTIPLIER", "epsilon", "noise_multiplier", "sample_rate", "steps"]

#: Past this, training learns nothing: a target epsilon needing more noise is refused.
MAX_NOISE_MULTIPLIER = 1e3

# noise_multiplier's answer is within this relative distance above the smallest one that works
_RELATIVE_TOLERANCE = 1e-4


def _positive_int(name: str, value: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise PrivacyError(f"{name} must be a positive integer, got {value!r}")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, int | float) and 0 < rate <= 1):
        raise PrivacyError(f"sample_rate must be in (0, 1], got {rate!r}")


def sample_rate(batch_size: int, rows: int) -> float:
    """Poisson sampling rate of an expected batch of ``batch_size``: ``min(1, batch_size/rows)``."""
    _positive_int("batch_size", batch_size)
    _positive_int("rows", rows)
    return min(1.0, batch_size / rows)


def steps(epochs: int, batch_size: int, rows: int) -> int:
    """Number of DP-SGD steps: ``epochs * ceil(rows / batch_size)``."""
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    _positive_int("rows", rows)
    return epochs * math.ceil(rows / batch_size)


@functools.lru_cache(maxsize=1024)
def _rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(
        sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-sampled Gaussian steps (RDP accountant)."""
    if not (isinstance(noise_multiplier, int | float) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    _check_rate(sample_rate)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise PrivacyError(f"steps must be a non-negative integer, got {steps!r}")
    _check_delta(delta)
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return _rdp_epsilon(float(noise_multiplier), float(sample_rate), steps, float(delta))


def noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier (to 1e-4 relative) whose `epsilon` is at most ``target_epsilon``."""
    if not (
        isinstance(target_epsilon, int | float)
        and math.isfinite(target_epsilon)
        and target_epsilon > 0
    ):
        raise PrivacyError(f"epsilon must be a positive finite number, got {target_epsilon!r}")
    _check_delta(delta)
    _check_rate(sample_rate)
    _positive_int("steps", steps)

    def fits(sigma: float) -> bool:
        return epsilon(sigma, sample_rate, steps, delta) <= target_epsilon

    if not fits(MAX_NOISE_MULTIPLIER):
        raise PrivacyError(
            f"epsilon {target_epsilon} at delta {delta} is out of reach for {steps} steps at "
            f"sample rate {sample_rate:.4g}: it would need a noise multiplier over "
            f"{MAX_NOISE_MULTIPLIER:g} (ask for a larger epsilon, fewer epochs or smaller batches)"
        )
    # bracket [low, high] with high fitting and low not, by doubling from 1
    high = 1.0
    if fits(high):
        low = high / 2
        while fits(low):
            if low < 1e-6:  # any noise at all meets this epsilon
                return low
            high, low = low, low / 2
    else:
        low = high
        while not fits(high):
            low, high = high, min(high * 2, MAX_NOISE_MULTIPLIER)

    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    sigma = float(
        dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda s: dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(s)),
                steps,
            ),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=_RELATIVE_TOLERANCE * low,
        )
    )
    # calibrate_dp_mechanism guarantees epsilon(sigma) <= target; check it with our own composition
    # (compose(event, steps) rather than SelfComposedDpEvent), which is what `epsilon` reports
    while not fits(sigma):
        sigma *= 1 + _RELATIVE_TOLERANCE
    return sigma
