"""Python SDK: clients for data scientists and devices.

``ModelCentricFLClient`` hosts FL processes and retrieves their models; ``FLClient`` is the
device side that trains with a downloaded plan; ``DataCentricClient`` works with datasets that
stay on a Node (search, mock samples, reviewed jobs, budgets); ``NetworkClient`` searches a
Network. Each Node client takes ``node_id=`` to reach its Node through a Network. Imports are
lazy so ``import pygrid.client`` does not pull torch until a client needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pygrid.client.data_centric import DataCentricClient, JobFailed
    from pygrid.client.device import FLClient, FLJob
    from pygrid.client.http import GridError
    from pygrid.client.model_centric import ModelCentricClient, ModelCentricFLClient
    from pygrid.client.network import NetworkClient, SearchHit

__all__ = [
    "DataCentricClient",
    "FLClient",
    "FLJob",
    "GridError",
    "JobFailed",
    "ModelCentricClient",
    "ModelCentricFLClient",
    "NetworkClient",
    "SearchHit",
]

_LAZY = {
    "DataCentricClient": "pygrid.client.data_centric",
    "JobFailed": "pygrid.client.data_centric",
    "FLClient": "pygrid.client.device",
    "FLJob": "pygrid.client.device",
    "GridError": "pygrid.client.http",
    "ModelCentricClient": "pygrid.client.model_centric",
    "ModelCentricFLClient": "pygrid.client.model_centric",
    "NetworkClient": "pygrid.client.network",
    "SearchHit": "pygrid.client.network",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pygrid.client' has no attribute {name!r}")
