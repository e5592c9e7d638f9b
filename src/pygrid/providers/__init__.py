"""Worker groups on AWS, GCP, Azure or the local machine, behind one interface chosen by name.

``get_provider("aws", region="eu-west-2")`` gives the AWS provider; ``get_provider("local",
root=...)`` the local reference one. Providers are registered by name in `PROVIDERS` as
``"module:Class"`` strings and imported only when used, so a cloud SDK (an extra:
``pygrid[aws]``, ``pygrid[gcp]``, ``pygrid[azure]``) is needed only by the deployments on that cloud.
"""

from __future__ import annotations

import importlib
from typing import Any

from pygrid.providers.base import (
    STATES,
    CloudProvider,
    GroupNotFound,
    GroupStatus,
    Instance,
    MissingCredentials,
    ProviderError,
    SizeOutOfBounds,
)

__all__ = [
    "PROVIDERS",
    "STATES",
    "CloudProvider",
    "GroupNotFound",
    "GroupStatus",
    "Instance",
    "MissingCredentials",
    "ProviderError",
    "SizeOutOfBounds",
    "get_provider",
    "resolve_provider",
]

#: Provider name -> ``"module:Class"`` of the `CloudProvider` implementing it.
PROVIDERS: dict[str, str] = {
    "local": "pygrid.providers.local:LocalProvider",
    "aws": "pygrid.providers.aws:AWSProvider",
    "gcp": "pygrid.providers.gcp:GCPProvider",
    "azure": "pygrid.providers.azure:AzureProvider",
}


def resolve_provider(name: str) -> type[CloudProvider]:
    """Import and return the `CloudProvider` class registered as ``name``."""
    try:
        target = PROVIDERS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"unknown cloud provider {name!r}; known providers: {known}") from None
    module_name, _, class_name = target.partition(":")
    provider_class: type[CloudProvider] = getattr(importlib.import_module(module_name), class_name)
    return provider_class


def get_provider(name: str, **options: Any) -> CloudProvider:
    """Build the provider registered as ``name`` with ``options`` (see each provider's class)."""
    return resolve_provider(name)(**options)
