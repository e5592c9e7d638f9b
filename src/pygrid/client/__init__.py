"""Python SDK: clients for data scientists and devices.

``ModelCentricFLClient`` hosts FL processes and retrieves their models; ``FLClient`` is the
device side that trains with a downloaded plan; ``DataCentricClient`` works with datasets that
stay on a Node (search, mock samples, reviewed jobs, budgets). Imports are lazy so
``import pygrid.client`` does not pull torch until a client needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pygrid.client.data_centric import DataCentricClient, JobFailed
    from pygrid.client.device import FLClient, FLJob
    from pygrid.client.http import GridError
    from pygrid.client.model_centric import ModelCentricFLClient

__all__ = [
    "DataCentricClient",
    "FLClient",
    "FLJob",
    "GridError",
    "JobFailed",
    "ModelCentricFLClient",
]

_LAZY = {
    "DataCentricClient": "pygrid.client.data_centric",
    "JobFailed": "pygrid.client.data_centric",
    "FLClient": "pygrid.client.device",
    "FLJob": "pygrid.client.device",
    "GridError": "pygrid.client.http",
    "ModelCentricFLClient": "pygrid.client.model_centric",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pygrid.client' has no attribute {name!r}")
