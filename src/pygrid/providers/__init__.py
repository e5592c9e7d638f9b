"""Worker groups on AWS, GCP, Azure or the local machine, behind one interface chosen by name.

``get_provider("aws", region="eu-west-2")`` gives the AWS provider; ``get_provider("local",
root=...)`` the local reference one. Providers are registered by name in `PROVIDERS` as
``"module:Class"`` strings and imported only when used, so a cloud SDK (an extra:
``pygrid[aws]``, ``pygrid[gcp]``, ``pygrid[azure]``) is needed only by the deployments on that cloud.

Each cloud's secret store (where the Node publishes its cloud Workers' token) is registered the
same way in `SECRET_STORES`: ``get_secret_store("gcp")``.
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
    SecretStore,
    SizeOutOfBounds,
)

__all__ = [
    "PROVIDERS",
    "SECRET_STORES",
    "STATES",
    "CloudProvider",
    "GroupNotFound",
    "GroupStatus",
    "Instance",
    "MissingCredentials",
    "ProviderError",
    "SecretStore",
    "SizeOutOfBounds",
    "get_provider",
    "get_secret_store",
    "resolve_provider",
    "resolve_secret_store",
]

#: Provider name -> ``"module:Class"`` of the `CloudProvider` implementing it.
PROVIDERS: dict[str, str] = {
    "local": "pygrid.providers.local:LocalProvider",
    "aws": "pygrid.providers.aws:AWSProvider",
    "gcp": "pygrid.providers.gcp:GCPProvider",
    "azure": "pygrid.providers.azure:AzureProvider",
}

#: Cloud name -> ``"module:Class"`` of its `SecretStore`; the cloud's module holds both classes.
SECRET_STORES: dict[str, str] = {
    "local": "pygrid.providers.local:LocalSecretStore",
    "aws": "pygrid.providers.aws:AWSSecretStore",
    "gcp": "pygrid.providers.gcp:GCPSecretStore",
    "azure": "pygrid.providers.azure:AzureSecretStore",
}


def _resolve(registry: dict[str, str], what: str, plural: str, name: str) -> Any:
    try:
        target = registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; known {plural}: {known}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def resolve_provider(name: str) -> type[CloudProvider]:
    """Import and return the `CloudProvider` class registered as ``name``."""
    provider_class: type[CloudProvider] = _resolve(PROVIDERS, "cloud provider", "providers", name)
    return provider_class


def get_provider(name: str, **options: Any) -> CloudProvider:
    """Build the provider registered as ``name`` with ``options`` (see each provider's class)."""
    return resolve_provider(name)(**options)


def resolve_secret_store(name: str) -> type[SecretStore]:
    """Import and return the `SecretStore` class registered as ``name``."""
    store_class: type[SecretStore] = _resolve(SECRET_STORES, "secret store", "secret stores", name)
    return store_class


def get_secret_store(name: str, **options: Any) -> SecretStore:
    """Build the secret store registered as ``name`` with ``options`` (see each store's class)."""
    return resolve_secret_store(name)(**options)
