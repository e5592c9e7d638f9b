"""``client_config`` and ``server_config`` of a hosted FL process. Every field is enforced;
unknown fields are refused, never ignored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pygrid.aggregation import AggregationConfig, FedAvg

Scalar = str | int | float | bool | None


class Strict(BaseModel):
    """Config models refuse unknown fields and are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientConfig(Strict):
    """What each device is told when its cycle request is accepted."""

    name: Annotated[
        str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ]
    version: Annotated[
        str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    ]
    batch_size: Annotated[int, Field(gt=0, le=1_000_000)]
    lr: Annotated[float, Field(gt=0, le=1e3)]
    max_updates: Annotated[int, Field(gt=0, le=10_000_000)] = Field(
        description="Most batches a device trains per cycle."
    )
    extras: dict[str, Scalar] = Field(
        default_factory=dict, description="Free-form values passed to the device for the plan."
    )


class NoAuth(Strict):
    """Anonymous devices may train (the default)."""

    type: Literal["none"] = "none"


class SharedSecretAuth(Strict):
    """Device tokens are HS256 JWTs signed with this secret (at least 32 characters)."""

    type: Literal["hs256"]
    secret: Annotated[str, Field(min_length=32, max_length=4096)]


class PublicKeyAuth(Strict):
    """Device tokens are RS256 or ES256 JWTs; the Node holds only the public key (PEM)."""

    type: Literal["rs256", "es256"]
    public_key: Annotated[str, Field(min_length=64, max_length=16_384)]


DeviceAuth = Annotated[NoAuth | SharedSecretAuth | PublicKeyAuth, Field(discriminator="type")]


class ServerConfig(Strict):
    """How the Node runs the process: who may train, when cycles close, how diffs combine."""

    min_workers: Annotated[int, Field(ge=1)] = Field(
        1,
        description="Devices that must be accepted in a cycle before it may close at its deadline.",
    )
    max_workers: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        100, description="Cap on devices accepted per cycle."
    )
    pool_selection: Literal["random", "iterate"] = Field(
        "random",
        description="iterate: first come, first served up to max_workers; random: each request is "
        "accepted with probability (free slots / max_workers), so early devices don't always win.",
    )
    do_not_reuse_workers_until_cycle: Annotated[int, Field(ge=0)] = Field(
        0,
        description="A device that trained in cycle n may train again from cycle n + this (0: every cycle).",
    )
    cycle_length: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] = Field(
        3600, description="Seconds from a cycle's start to its deadline."
    )
    num_cycles: Annotated[int, Field(ge=0)] = Field(0, description="Cycles to run; 0 is unlimited.")
    min_diffs: Annotated[int, Field(ge=1)] = Field(
        1, description="Diffs a cycle needs to close at its deadline; with fewer it is extended."
    )
    max_diffs: Annotated[int, Field(ge=1)] | None = Field(
        None, description="A cycle closes as soon as it has this many diffs (default: max_workers)."
    )
    minimum_upload_speed: Annotated[float, Field(ge=0)] = Field(
        0, description="Mbit/s a device must report to be accepted (0: no requirement)."
    )
    minimum_download_speed: Annotated[float, Field(ge=0)] = Field(
        0, description="Mbit/s a device must report to be accepted (0: no requirement)."
    )
    authentication: DeviceAuth = Field(default_factory=NoAuth)
    aggregation: AggregationConfig = Field(default_factory=FedAvg)

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        if self.min_diffs > self.effective_max_diffs:
            raise ValueError("min_diffs must not exceed max_diffs")
        if self.effective_max_diffs > self.max_workers:
            raise ValueError(
                "max_diffs must not exceed max_workers (diffs come from accepted devices)"
            )
        return self

    @property
    def effective_max_diffs(self) -> int:
        """max_diffs, defaulting to max_workers."""
        return self.max_diffs if self.max_diffs is not None else self.max_workers

    @property
    def requires_speed_test(self) -> bool:
        """Whether devices must measure their speed before requesting a cycle."""
        return self.minimum_upload_speed > 0 or self.minimum_download_speed > 0

    def public_dict(self) -> dict[str, object]:
        """The config as the API shows it: a device-token secret is never echoed back."""
        data = self.model_dump(mode="json")
        if data["authentication"].get("secret"):
            data["authentication"]["secret"] = "***"
        return data
