"""Server settings: one pydantic model, filled from CLI options, environment and test overrides.

Unknown fields are errors, never silently ignored (DESIGN.md section 3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from pygrid.choices import AppKind

DEFAULT_PORTS = {"node": 5000, "network": 7000}
MIB = 1024 * 1024


def pygrid_home() -> Path:
    """The folder that holds every local PyGrid state: ``$PYGRID_HOME`` or ``~/.pygrid``."""
    return Path(os.environ.get("PYGRID_HOME") or Path.home() / ".pygrid").expanduser()


def default_data_dir(app: AppKind | str, server_id: str) -> Path:
    """Where a server keeps its SQLite database, blobs and secret key unless told otherwise."""
    return pygrid_home() / str(app) / server_id


class ServerSettings(BaseModel):
    """Everything a Node or Network server needs to start; validated before anything starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: AppKind
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    num_replicas: Annotated[int, Field(ge=1, le=64)] = 1
    threads: Annotated[int, Field(ge=1, le=256)] = 8
    data_dir: Path
    database_url: str | None = None
    blob_url: str | None = None
    secret_key: SecretStr | None = None
    network_url: str | None = None
    # A Node's join token for network_url (docs/network.md); spent once, then network.json holds
    # the credential the Network issued.
    network_token: SecretStr | None = None
    # The URL the Network and its clients reach this Node at; http://host:port when unset.
    public_url: str | None = None
    heartbeat_seconds: Annotated[float, Field(ge=0.2, le=3600)] = 10.0
    # Network: how long a routed request may wait for the Node's answer.
    route_timeout: Annotated[float, Field(gt=0, le=3600)] = 60.0
    owner_email: str | None = None
    owner_password: SecretStr | None = None
    max_content_length: Annotated[int, Field(ge=1024)] = 64 * MIB
    token_ttl_seconds: Annotated[int, Field(ge=30, le=24 * 3600)] = 30 * 60
    # How often each replica looks for FL cycles past their deadline; 0 turns the thread off
    # (tests then close cycles themselves).
    scheduler_interval: Annotated[float, Field(ge=0, le=3600)] = 1.0
    # How long a Worker holds a data-centric job without a heartbeat before it is requeued.
    lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # In a cloud deployment: the provider and Worker group the Node resizes from its queue.
    cloud: Annotated[str, Field(pattern="^(local|aws|gcp|azure)$")] | None = None
    worker_group: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    jobs_per_worker: Annotated[int, Field(ge=1, le=10_000)] = 2
    autoscale_cooldown: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    # In a cloud deployment: the secret (ARN, Secret Manager id, Key Vault secret URL) where the
    # Node publishes the token its cloud Workers read (pygrid.providers.worker_secret).
    worker_token_secret: Annotated[str, Field(min_length=1, max_length=500)] | None = None

    @field_validator("network_url", "public_url")
    @classmethod
    def _network_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        """DATABASE_URL as SQLAlchemy wants it; SQLite in the data dir when none is given."""
        from pygrid.db.engine import normalise_database_url

        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{self.data_dir / f'{self.app}.db'}"

    @property
    def resolved_blob_url(self) -> str:
        """The blob store URL; a local folder in the data dir when none is given."""
        return self.blob_url or str(self.data_dir / "blobs")

    @property
    def resolved_public_url(self) -> str:
        """Where others reach this server: public_url, else http://host:port (0.0.0.0 -> local)."""
        if self.public_url:
            return self.public_url
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)  # noqa: S104
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def issuer(self) -> str:
        """The JWT issuer this server signs as and accepts."""
        return f"pygrid:{self.app}:{self.id}"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show: no secrets, database credentials masked."""
        from pygrid.db.engine import mask_database_url

        return {
            "app": str(self.app),
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "num_replicas": self.num_replicas,
            "data_dir": str(self.data_dir),
            "database_url": mask_database_url(self.resolved_database_url),
            "blob_url": self.resolved_blob_url,
            "network_url": self.network_url,
            "public_url": self.resolved_public_url,
        }


# Environment variables PyGrid's servers read, by app; names follow PyGrid's documented ones.
ENV_VARS: dict[AppKind, dict[str, str]] = {
    AppKind.node: {
        "port": "GRID_NODE_PORT",
        "host": "GRID_NODE_HOST",
        "id": "NODE_ID",
        "num_replicas": "NUM_REPLICAS",
        "network_url": "NETWORK",
        "network_token": "NETWORK_TOKEN",
        "public_url": "PYGRID_PUBLIC_URL",
        "heartbeat_seconds": "PYGRID_HEARTBEAT_SECONDS",
    },
    AppKind.network: {
        "port": "GRID_NETWORK_PORT",
        "host": "GRID_NETWORK_HOST",
        "id": "NETWORK_ID",
        "public_url": "PYGRID_PUBLIC_URL",
        "route_timeout": "PYGRID_ROUTE_TIMEOUT",
    },
}
COMMON_ENV_VARS = {
    "database_url": "DATABASE_URL",
    "secret_key": "SECRET_KEY",
    "data_dir": "PYGRID_DATA_DIR",
    "blob_url": "PYGRID_BLOB_URL",
    "owner_email": "PYGRID_OWNER_EMAIL",
    "owner_password": "PYGRID_OWNER_PASSWORD",
    "max_content_length": "PYGRID_MAX_CONTENT_LENGTH",
    "token_ttl_seconds": "PYGRID_TOKEN_TTL_SECONDS",
    "scheduler_interval": "PYGRID_SCHEDULER_INTERVAL",
    "lease_seconds": "PYGRID_LEASE_SECONDS",
    "cloud": "PYGRID_CLOUD",
    "worker_group": "PYGRID_WORKER_GROUP",
    "jobs_per_worker": "PYGRID_JOBS_PER_WORKER",
    "autoscale_cooldown": "PYGRID_AUTOSCALE_COOLDOWN",
    "worker_token_secret": "PYGRID_WORKER_TOKEN_SECRET",
}
DEFAULT_IDS = {AppKind.node: "default", AppKind.network: "network"}


def settings_from_env(
    app: AppKind, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> ServerSettings:
    """Defaults, then the environment, then ``overrides``: how ``create_app()`` configures itself."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {"app": app, "port": DEFAULT_PORTS[app], "id": DEFAULT_IDS[app]}
    for field, var in {**ENV_VARS[app], **COMMON_ENV_VARS}.items():
        if env.get(var):
            values[field] = env[var]
    values.update(overrides or {})
    values.setdefault("data_dir", default_data_dir(app, str(values["id"])))
    return ServerSettings.model_validate(values)
