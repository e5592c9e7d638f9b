"""What a data scientist may ask for in a job, as pydantic models (unknown fields are errors)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobKind = Literal["train", "evaluate", "statistics"]
Loss = Literal["cross_entropy", "mse"]
Statistic = Literal["count", "sum", "mean", "histogram"]
ColumnName = Annotated[str, Field(min_length=1, max_length=100)]


class Strict(BaseModel):
    """Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class TrainSpec(Strict):
    """Hyper-parameters of a ``train`` job."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 32
    lr: Annotated[float, Field(gt=0, le=100)] = 0.1
    loss: Loss = "cross_entropy"
    optimizer: Literal["sgd", "adam"] = "sgd"


class EvaluateSpec(Strict):
    """How an ``evaluate`` job scores a model."""

    loss: Loss = "cross_entropy"
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 1024


class ColumnStatistics(Strict):
    """The numbers wanted from one column, over values clipped to [lower, upper]."""

    name: ColumnName
    stats: Annotated[list[Statistic], Field(min_length=1, max_length=4)]
    lower: float | None = None
    upper: float | None = None
    bins: Annotated[int, Field(ge=1, le=1000)] = 10

    @model_validator(mode="after")
    def _check(self) -> ColumnStatistics:
        if len(set(self.stats)) != len(self.stats):
            raise ValueError("stats lists a statistic twice")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError("lower must be below upper")
        return self


class StatisticsSpec(Strict):
    """The columns of a ``statistics`` job."""

    columns: Annotated[list[ColumnStatistics], Field(min_length=1, max_length=100)]


class PrivacySpec(Strict):
    """Differential privacy: the epsilon (and delta) the job may cost."""

    epsilon: Annotated[float, Field(gt=0, le=100)]
    delta: Annotated[float, Field(gt=0, lt=0.1)] | None = None
    max_grad_norm: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    mechanism: Literal["laplace", "gaussian"] = "laplace"


class JobSpec(Strict):
    """The ``spec`` form field of ``POST /data-centric/jobs``."""

    dataset_id: int
    kind: JobKind
    features: Annotated[list[ColumnName], Field(min_length=1, max_length=10_000)] | None = None
    target: ColumnName | None = None
    train: TrainSpec | None = None
    evaluate: EvaluateSpec | None = None
    statistics: StatisticsSpec | None = None
    privacy: PrivacySpec | None = None
