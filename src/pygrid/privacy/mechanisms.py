"""Noise mechanisms for statistics, calibrated per query; the budget is split by basic composition.

Neighbouring datasets differ by adding or removing one row. The published row count and column
bounds are public (they are in the dataset's schema), so the sensitivities follow from them:

* count: 1;
* sum of values clipped to ``[lower, upper]``: ``max(|lower|, |upper|)``;
* histogram: one row moves one bin by one, so L1 = L2 = 1;
* mean: ``noisy sum / max(noisy count, 1)``: two queries, each paying its share of the budget.

A statistics job asking for ``k`` numbers gives each ``epsilon / k`` (and ``delta / k`` for the
Gaussian mechanism). Basic composition adds these back up to exactly what was asked, which is what
the release charges. Laplace scales are ``sensitivity / epsilon``; Gaussian sigmas come from
``dp_accounting``'s exact analytic calibration (Balle and Wang 2018), far tighter than the classic
``sqrt(2 ln(1.25 / delta)) / epsilon``, which does not even hold for epsilon > 1.

Everything here is NumPy; ``dp_accounting`` is imported only when a Gaussian sigma is needed. The
noise is floating-point noise from NumPy's generator (Mironov 2012 describes that attack surface).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pygrid.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Mechanism",
    "PrivacyError",
    "QueryNoise",
    "gaussian_sigma",
    "histogram",
    "laplace_scale",
    "noisy_count",
    "noisy_histogram",
    "noisy_mean",
    "noisy_sum",
    "split_budget",
    "sum_sensitivity",
]

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS: tuple[Mechanism, ...] = ("laplace", "gaussian")


class PrivacyError(InvalidInput, ValueError):
    """Privacy parameters that cannot be honoured (HTTP 422); the message says which and why."""

    code = "invalid_privacy"


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise PrivacyError(f"epsilon must be a positive finite number, got {epsilon!r}")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _check_sensitivity(sensitivity: float) -> None:
    if not (isinstance(sensitivity, int | float) and math.isfinite(sensitivity)):
        raise PrivacyError(f"sensitivity must be finite, got {sensitivity!r}")
    if sensitivity < 0:
        raise PrivacyError(f"sensitivity must be >= 0, got {sensitivity!r}")


def laplace_scale(sensitivity: float, epsilon: float) -> float:
    """Scale ``b`` of Laplace noise that makes a query of L1 ``sensitivity`` epsilon-DP."""
    _check_sensitivity(sensitivity)
    _check_epsilon(epsilon)
    return sensitivity / epsilon


@functools.lru_cache(maxsize=256)
def _unit_sigma(epsilon: float, delta: float) -> float:
    import dp_accounting

    sigma = float(dp_accounting.get_sigma_gaussian(epsilon, delta))
    # brentq returns the root to within 1e-12 on either side: step past it so the guarantee
    # holds, and check it with the exact (epsilon, delta) curve of the Gaussian mechanism.
    sigma += 1e-9
    if dp_accounting.get_epsilon_gaussian(sigma, delta) > epsilon:
        raise PrivacyError(f"could not calibrate a Gaussian for epsilon={epsilon}, delta={delta}")
    return sigma


def gaussian_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """Smallest Gaussian std making a query of L2 ``sensitivity`` (epsilon, delta)-DP (exact)."""
    _check_sensitivity(sensitivity)
    _check_epsilon(epsilon)
    _check_delta(delta)
    return sensitivity * _unit_sigma(float(epsilon), float(delta))


def split_budget(epsilon: float, delta: float | None, queries: int) -> tuple[float, float | None]:
    """Each of ``queries`` queries' share of (epsilon, delta): an even split."""
    _check_epsilon(epsilon)
    if delta is not None:
        _check_delta(delta)
    if not (isinstance(queries, int) and queries >= 1):
        raise PrivacyError(f"queries must be a positive integer, got {queries!r}")
    return epsilon / queries, None if delta is None else delta / queries


def sum_sensitivity(lower: float, upper: float) -> float:
    """How much one row clipped to ``[lower, upper]`` can change a sum: ``max(|lower|, |upper|)``."""
    if not (math.isfinite(lower) and math.isfinite(upper) and lower <= upper):
        raise PrivacyError(f"bounds must be finite with lower <= upper, got [{lower}, {upper}]")
    return max(abs(lower), abs(upper))


@dataclass(frozen=True)
class QueryNoise:
    """One query's mechanism and budget share; `scale` and `add` calibrate to a sensitivity."""

    mechanism: Mechanism
    epsilon: float
    delta: float | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise PrivacyError(
                f"unknown mechanism {self.mechanism!r}; choose one of: " + ", ".join(MECHANISMS)
            )
        _check_epsilon(self.epsilon)
        if self.mechanism == "gaussian":
            if self.delta is None:
                raise PrivacyError("the gaussian mechanism needs a delta")
            _check_delta(self.delta)

    def scale(self, sensitivity: float) -> float:
        """Laplace scale or Gaussian std for a query of this ``sensitivity``."""
        if self.mechanism == "laplace":
            return laplace_scale(sensitivity, self.epsilon)
        assert self.delta is not None  # checked in __post_init__
        return gaussian_sigma(sensitivity, self.epsilon, self.delta)

    def add(
        self, value: float | np.ndarray, sensitivity: float, rng: np.random.Generator
    ) -> np.ndarray:
        """``value`` (float64) plus independent noise on every element."""
        import numpy as np

        value = np.asarray(value, dtype=np.float64)
        scale = self.scale(sensitivity)
        if self.mechanism == "laplace":
            noise = rng.laplace(0.0, scale, size=value.shape)
        else:
            noise = rng.normal(0.0, scale, size=value.shape)
        return np.asarray(value + noise, dtype=np.float64)


def noisy_count(rows: int, noise: QueryNoise, rng: np.random.Generator) -> float:
    """The row count plus noise for sensitivity 1."""
    return float(noise.add(rows, 1.0, rng))


def noisy_sum(
    values: np.ndarray, lower: float, upper: float, noise: QueryNoise, rng: np.random.Generator
) -> float:
    """Sum of ``values`` clipped to ``[lower, upper]``, plus noise for that sensitivity."""
    import numpy as np

    sensitivity = sum_sensitivity(lower, upper)
    total = np.clip(np.asarray(values, dtype=np.float64), lower, upper).sum()
    return float(noise.add(total, sensitivity, rng))


def noisy_mean(
    values: np.ndarray, lower: float, upper: float, noise: QueryNoise, rng: np.random.Generator
) -> float:
    """``noisy sum / max(noisy count, 1)``: two queries, each with the budget in ``noise``."""
    total = noisy_sum(values, lower, upper, noise, rng)
    count = noisy_count(len(values), noise, rng)
    return total / max(count, 1.0)


def noisy_histogram(
    values: np.ndarray,
    lower: float,
    upper: float,
    bins: int,
    noise: QueryNoise,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``values`` clipped to ``[lower, upper]`` in ``bins`` equal bins, plus noise.

    The bin edges depend only on the public bounds, so they carry no noise.
    """
    counts, edges = histogram(values, lower, upper, bins)
    return noise.add(counts, 1.0, rng), edges


def histogram(
    values: np.ndarray, lower: float, upper: float, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 counts of ``values`` clipped to ``[lower, upper]`` in ``bins`` equal bins."""
    import numpy as np

    sum_sensitivity(lower, upper)  # the same bound checks
    if not (isinstance(bins, int) and bins >= 1):
        raise PrivacyError(f"bins must be a positive integer, got {bins!r}")
    clipped = np.clip(np.asarray(values, dtype=np.float64), lower, upper)
    # lower == upper is a single point: give numpy a non-empty range, every value lands in bin 0
    edges_range = (lower, upper) if upper > lower else (lower, lower + 1.0)
    counts, edges = np.histogram(clipped, bins=bins, range=edges_range)
    return counts.astype(np.float64), edges.astype(np.float64)
