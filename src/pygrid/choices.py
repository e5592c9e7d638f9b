"""The named choices CLI options offer. Kept free of pydantic and every other heavy import,
because ``pygrid --help`` loads them."""

from __future__ import annotations

from enum import StrEnum


class AppKind(StrEnum):
    """Which server a process runs."""

    node = "node"
    network = "network"


class Cloud(StrEnum):
    """Where a deployment runs."""

    aws = "aws"
    gcp = "gcp"
    azure = "azure"


class Database(StrEnum):
    """SQLite on the VM, or the cloud's managed PostgreSQL."""

    embedded = "embedded"
    managed = "managed"


class StateKind(StrEnum):
    """Where Terraform keeps its state."""

    local = "local"
    remote = "remote"
