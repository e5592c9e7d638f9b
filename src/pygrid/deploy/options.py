"""What a deployment is made of: validated options, the same for every cloud."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import pygrid
from pygrid.choices import AppKind as App
from pygrid.choices import Cloud, Database, StateKind

# Module outputs every cloud provides (infra/README.md); the root module re-exports them.
OUTPUTS = (
    "app_url",
    "instance_id",
    "public_ip",
    "private_ip",
    "bucket",
    "worker_group",
    "database_url_secret",
    "region",
    "cloud",
)
DEFAULT_REGIONS = {"aws": "eu-west-2", "gcp": "europe-west2", "azure": "uksouth"}
DEFAULT_INSTANCE_TYPES = {"aws": "t3.medium", "gcp": "e2-medium", "azure": "Standard_B2s"}
APP_PORTS = {"node": 5000, "network": 7000}
TORCH_VERSION = "2.13.0"


class DeployOptions(BaseModel):
    """Everything ``pygrid deploy`` needs; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: Cloud
    app: App
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,30}$")]
    region: str
    instance_type: str
    worker_instance_type: str
    workers_min: Annotated[int, Field(ge=0, le=1000)] = 0
    workers_max: Annotated[int, Field(ge=0, le=1000)] = 0
    database: Database = Database.embedded
    allowed_cidrs: list[str] = Field(default_factory=list)
    app_cidrs: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"])
    state: StateKind = StateKind.local
    state_bucket: str | None = None
    pygrid_version: str = pygrid.__version__
    project: str | None = None
    subscription_id: str | None = None
    endpoint_url: str | None = None
    ssh_public_key: str | None = None
    image_id: str | None = None

    @field_validator("allowed_cidrs", "app_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_network(value, strict=False)
        return values

    @model_validator(mode="after")
    def _consistent(self) -> DeployOptions:
        if self.workers_min > self.workers_max:
            raise ValueError("workers_min must not exceed workers_max")
        if self.state is StateKind.remote and not self.state_bucket:
            raise ValueError(
                "--state remote needs --state-bucket (an existing bucket/container for the state)"
            )
        if self.endpoint_url and not self.endpoint_url.startswith(
            ("http://127.", "http://localhost")
        ):
            raise ValueError(
                "endpoint overrides must point at 127.0.0.1 or localhost (a local stand-in)"
            )
        return self

    @property
    def app_port(self) -> int:
        """The one port the firewall opens."""
        return APP_PORTS[self.app]
