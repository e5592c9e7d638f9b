"""Differential privacy for data-centric jobs: DP-SGD accounting and noise for statistics.

Pure functions on numbers and NumPy arrays (no Flask, database or torch), shared by the Node,
which calibrates and records a job's privacy cost, and the Worker, which adds the noise.
"""

from pygrid.privacy.dpsgd import epsilon, noise_multiplier, sample_rate, steps
from pygrid.privacy.mechanisms import (
    PrivacyError,
    QueryNoise,
    gaussian_sigma,
    laplace_scale,
    split_budget,
)

__all__ = [
    "PrivacyError",
    "QueryNoise",
    "epsilon",
    "gaussian_sigma",
    "laplace_scale",
    "noise_multiplier",
    "sample_rate",
    "split_budget",
    "steps",
]
