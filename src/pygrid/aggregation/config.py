"""How a process aggregates its diffs: ``server_config.aggregation``, one model per method.

The models form a discriminated union on ``method``; unknown fields and out-of-range values are
errors (DESIGN.md section 3). `parse_aggregation_config` validates JSON-like data into one of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "AggregationConfig",
    "DPFedAvg",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Median",
    "TrimmedMean",
    "parse_aggregation_config",
]


class _Method(BaseModel):
    # inf and NaN would pass every gt/lt bound check and then poison the model; the attribute
    # docstrings become the fields' descriptions in the JSON schema.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class FedAvg(_Method):
    """Weighted FedAvg: new = params - sum(n_i * diff_i) / sum(n_i), n_i = a diff's num_samples."""

    method: Literal["fedavg"] = "fedavg"


class FedAvgM(_Method):
    """FedAvg with server momentum (Hsu et al. 2019): m = momentum * m + mean; new = params - server_lr * m."""

    method: Literal["fedavgm"] = "fedavgm"
    server_lr: Annotated[float, Field(gt=0)] = 1.0
    """Server learning rate applied to the momentum buffer."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """Decay of the momentum buffer; 0 with server_lr 1 is plain FedAvg."""


class _Adaptive(_Method):
    server_lr: Annotated[float, Field(gt=0)] = 0.01
    """Server learning rate (eta in the paper)."""
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """Decay of the first moment (mean of the pseudo-gradients)."""
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    """Decay of the second moment (mean of their squares)."""
    tau: Annotated[float, Field(gt=0)] = 1e-3
    """Degree of adaptivity: added to sqrt(v) so that a small v does not blow the step up."""


class FedAdam(_Adaptive):
    """Adam on the server (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2)."""

    method: Literal["fedadam"] = "fedadam"


class FedYogi(_Adaptive):
    """Yogi on the server (Reddi et al. 2021): FedAdam with an additive second-moment update."""

    method: Literal["fedyogi"] = "fedyogi"


class Median(_Method):
    """Coordinate-wise median of the diffs, unweighted: robust to a minority of outliers."""

    method: Literal["median"] = "median"


class TrimmedMean(_Method):
    """Coordinate-wise trimmed mean, unweighted: drop the floor(trim_ratio * n) lowest and highest values."""

    method: Literal["trimmed_mean"] = "trimmed_mean"
    trim_ratio: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    """Fraction of the diffs cut at EACH end of every coordinate (0 is the plain unweighted mean)."""


class DPFedAvg(_Method):
    """DP-FedAvg with fixed clipping (McMahan et al. 2018), accounted over cycles with RDP.

    Each diff is clipped to L2 norm ``clip_norm``, the clipped diffs are averaged unweighted, and
    Gaussian noise of std ``noise_multiplier * clip_norm / n`` is added to every coordinate.
    Training must stop before the privacy loss passes ``target_epsilon`` at ``delta``.
    """

    method: Literal["dp_fedavg"] = "dp_fedavg"
    clip_norm: Annotated[float, Field(gt=0)]
    """Largest L2 norm (over all tensors of a diff jointly) one device's diff may contribute."""
    noise_multiplier: Annotated[float, Field(ge=0)]
    """Noise std relative to clip_norm; 0 means no noise, hence no privacy (epsilon is infinite)."""
    target_epsilon: Annotated[float, Field(gt=0)]
    """Privacy budget of the whole process: no cycle may close whose release would exceed it."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    """The delta of (epsilon, delta)-DP; keep it well below 1 / (number of devices)."""
    sampling_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Expected fraction of the device population taking part in one cycle, each device
    independently (Poisson sampling). 1.0 claims no amplification by sampling: use it unless
    the selection really is random."""


AggregationConfig = Annotated[
    FedAvg | FedAvgM | FedAdam | FedYogi | Median | TrimmedMean | DPFedAvg,
    Field(discriminator="method"),
]
"""Any aggregation config; ``method`` says which. A server_config without one means `FedAvg`."""

_ADAPTER: TypeAdapter[AggregationConfig] = TypeAdapter(AggregationConfig)


def parse_aggregation_config(data: Any = None) -> AggregationConfig:
    """Validate JSON-like data (a dict with ``method``, or None for FedAvg) into a config model."""
    if data is None:
        return FedAvg()
    return _ADAPTER.validate_python(data)
