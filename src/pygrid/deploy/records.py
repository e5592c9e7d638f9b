"""Deployments on disk: ``~/.pygrid/deployments/<name>/`` holds the rendered root module, the
Terraform state (when local) and ``deployment.json``, the record ``pygrid status`` reads."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pygrid.config import pygrid_home

RECORD = "deployment.json"


class Status:
    """Where a deployment is in its life."""

    rendered = "rendered"  # dry run: nothing created
    applying = "applying"  # terraform apply started; an interrupted run stays here
    failed = "failed"  # terraform failed; resume with --resume or clean up with destroy
    applied = "applied"
    destroying = "destroying"
    destroyed = "destroyed"


@dataclass
class Deployment:
    """The record of one deployment."""

    name: str
    cloud: str
    app: str
    options: dict[str, Any]
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    updated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def deployments_dir() -> Path:
    """Where every deployment folder lives."""
    return pygrid_home() / "deployments"


def folder(name: str) -> Path:
    """The folder of deployment ``name``."""
    return deployments_dir() / name


def load(name: str) -> Deployment | None:
    """The record of ``name``, or None if there is none."""
    path = folder(name) / RECORD
    if not path.exists():
        return None
    return Deployment(**json.loads(path.read_text()))


def save(deployment: Deployment) -> None:
    """Write the record atomically (a crash leaves the old record or the new one, never half)."""
    deployment.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    target = folder(deployment.name)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = target / f".{RECORD}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(deployment), handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target / RECORD)


def all_deployments() -> list[Deployment]:
    """Every recorded deployment, by name."""
    root = deployments_dir()
    if not root.is_dir():
        return []
    found = (load(path.name) for path in sorted(root.iterdir()) if (path / RECORD).exists())
    return [d for d in found if d is not None]
