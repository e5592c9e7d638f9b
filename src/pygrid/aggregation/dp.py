"""DP-FedAvg with fixed clipping, and its privacy accounting over cycles.

After McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models": one
cycle releases ``mean_i(clip(diff_i)) + N(0, (z * C / n)^2)`` per coordinate, where ``C`` is
``clip_norm``, ``z`` ``noise_multiplier`` and ``n`` the number of diffs. Clipping bounds what
any one device can change in the sum by ``C``, so the noise on the sum, ``z * C``, is calibrated
to that sensitivity. The mean is unweighted: weighting by the claimed num_samples would break
that bound. The mean divides by the actual ``n``, where the paper's fixed-denominator estimator
divides by the expected count; the noise on the sum is ``z * C`` either way.

Accounting composes one Poisson-subsampled Gaussian mechanism per cycle in Google's
``dp-accounting`` RDP accountant. It assumes each device takes part in a cycle independently with
probability ``sampling_rate``; with the default 1.0 no amplification by sampling is claimed.

The noise comes from a ``torch.Generator`` (Mersenne Twister) seeded with 64 bits from `secrets`:
unpredictable without the seed, though not a cryptographically secure generator, and like most
DP libraries this samples floating-point Gaussians (Mironov 2012 describes the attack surface of
that).
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping, Sequence

import torch

from pygrid.aggregation.config import DPFedAvg
from pygrid.aggregation.fedavg import StreamingSum, cast_like
from pygrid.aggregation.sources import DiffSource, check_diffs

__all__ = [
    "PrivacyBudgetExceeded",
    "clip_factor",
    "diff_norm",
    "dp_mean",
    "epsilon_after",
    "max_cycles",
    "noise_std",
    "would_exceed",
]


class PrivacyBudgetExceeded(RuntimeError):
    """Releasing one more cycle would take the privacy loss past ``target_epsilon``."""


def diff_norm(diff: DiffSource) -> float:
    """L2 norm of a diff over all its tensors jointly, read one tensor at a time."""
    squares = 0.0
    for name in diff.names():
        tensor = diff.tensor(name)
        if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
            tensor = tensor.to(torch.float64)
        squares += float(torch.linalg.vector_norm(tensor, dtype=torch.float64)) ** 2
        del tensor  # before the next read: one tensor of the diff at a time
    return math.sqrt(squares)


def clip_factor(diff: DiffSource, clip_norm: float) -> float:
    """The scale ``min(1, clip_norm / ||diff||)`` that brings ``diff`` within ``clip_norm``."""
    norm = diff_norm(diff)
    if not math.isfinite(norm):
        raise ValueError(f"{diff!r} has NaN or infinite values: its norm is {norm}")
    return 1.0 if norm <= clip_norm else clip_norm / norm


def noise_std(config: DPFedAvg, num_diffs: int) -> float:
    """Std of the Gaussian noise on each coordinate of the mean: ``z * C / n``."""
    if num_diffs < 1:
        raise ValueError("no diffs to aggregate")
    return config.noise_multiplier * config.clip_norm / num_diffs


def dp_mean(
    template: Mapping[str, torch.Tensor],
    diffs: Sequence[DiffSource],
    config: DPFedAvg,
    *,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Clip each diff to ``clip_norm``, average unweighted, add Gaussian noise: one cycle's release.

    Each diff is read twice, one tensor at a time: once for its norm, once to add it scaled.
    ``seed`` makes the noise reproducible, for tests only; by default it is unpredictable.
    """
    check_diffs(template, diffs)
    clipped = StreamingSum(template)
    for diff in diffs:
        clipped.add(diff, scale=clip_factor(diff, config.clip_norm))
    std = noise_std(config, len(diffs))
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(64) if seed is None else seed)
    released = {}
    for name, total in clipped.sums.items():
        mean = total.div_(len(diffs))
        if std > 0:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            mean.add_(noise, alpha=std)
        released[name] = cast_like(mean, dtype or template[name])
    return released


@functools.lru_cache(maxsize=1024)
def _epsilon(cycles: int, noise_multiplier: float, sampling_rate: float, delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant.compose(event, cycles)
    return float(accountant.get_epsilon(delta))


def epsilon_after(cycles: int, config: DPFedAvg) -> float:
    """Epsilon (at ``config.delta``) spent after ``cycles`` released cycles; inf without noise."""
    if cycles < 0:
        raise ValueError(f"cycles must be >= 0, got {cycles}")
    if cycles == 0:
        return 0.0
    if config.noise_multiplier == 0:
        return math.inf
    return _epsilon(cycles, config.noise_multiplier, config.sampling_rate, config.delta)


def would_exceed(cycles_done: int, config: DPFedAvg) -> bool:
    """True if releasing one more cycle after ``cycles_done`` would push epsilon past the target."""
    return epsilon_after(cycles_done + 1, config) > config.target_epsilon


def max_cycles(config: DPFedAvg, limit: int = 10**7) -> int:
    """How many cycles fit in ``target_epsilon`` (at most ``limit``): the Node's stopping point."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if would_exceed(0, config):
        return 0
    low, high = 1, 2  # epsilon_after(low) is within the target
    while high <= limit and not would_exceed(high - 1, config):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:  # invariant: low fits, high does not (or is past the limit)
        middle = (low + high) // 2
        if would_exceed(middle - 1, config):
            high = middle
        else:
            low = middle
    return low
