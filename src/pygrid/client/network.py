"""A Network from Python: which Nodes exist, what they publish, and the route to each.

``search`` finds datasets and ``search_model`` FL processes across every Node the Network
knows; each hit names its Node and the Network's route to it, so a client that reaches only
the Network can go on with ``DataCentricClient(network_url, node_id=hit.node_id)`` (or the
model-centric and device clients likewise).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pygrid.client.http import HttpClient, base_url

__all__ = ["Hits", "NetworkClient", "SearchHit"]


@dataclass(frozen=True)
class SearchHit:
    """One dataset (from ``search``) or FL process (from ``search_model``) on one Node."""

    node_id: str
    #: The Node's own URL as it registered it; maybe not reachable from here.
    node_url: str
    #: ``online`` or ``stale`` in cached answers; live answers come from online Nodes.
    node_status: str
    #: ``<network>/nodes/<node_id>``: the Node through the Network.
    routed_url: str
    dataset: dict[str, Any] | None = None
    process: dict[str, Any] | None = None

    @property
    def mock_url(self) -> str | None:
        """The dataset's mock sample through the Network (None for a process). Nodes publish
        it as a path on the Node; anything else is returned as published."""
        path = (self.dataset or {}).get("mock_url")
        if not path:
            return None
        return f"{self.routed_url}{path}" if str(path).startswith("/") else str(path)


class Hits(list[SearchHit]):
    """Search hits, plus how many Nodes were asked and which did not answer in time."""

    def __init__(
        self,
        hits: Iterable[SearchHit] = (),
        nodes_searched: int = 0,
        unanswered: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(hits)
        self.nodes_searched = nodes_searched
        #: ``[{"node_id", "reason"}]``: Nodes a live search could not hear from.
        self.unanswered: list[dict[str, Any]] = unanswered or []


class NetworkClient:
    """Search, list Nodes and find the route to one Node of a Network."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.http = HttpClient(url, timeout=timeout)

    @property
    def url(self) -> str:
        """The Network's base URL."""
        return self.http.url

    def __enter__(self) -> NetworkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()

    def search(
        self,
        tags: str | Iterable[str] | None = None,
        q: str | None = None,
        live: bool = False,
        timeout: float = 2.0,
    ) -> Hits:
        """Datasets carrying every tag and matching ``q``, across Nodes; ``live`` asks each
        online Node now (at most ``timeout`` s each) instead of reading the cached catalogue."""
        params = _live(live, timeout)
        if tags:
            items = tags.split(",") if isinstance(tags, str) else list(tags)
            params["tags"] = ",".join(t.strip() for t in items if t.strip())
        if q:
            params["q"] = q
        return self._hits("/search", params, "dataset")

    def search_model(
        self, name: str, version: str | None = None, live: bool = False, timeout: float = 2.0
    ) -> Hits:
        """FL processes named ``name`` (and ``version``) across Nodes."""
        params = {**_live(live, timeout), "name": name}
        if version is not None:
            params["version"] = version
        return self._hits("/search-model", params, "process")

    def nodes(self) -> list[dict[str, Any]]:
        """Every registered Node with its status, last heartbeat and catalogue."""
        return list(self.http.json("GET", "/registry/nodes")["nodes"])

    def node_url(self, node_id: str) -> str:
        """``<network>/nodes/<node_id>``: where a client reaches that Node through the Network."""
        return base_url(self.url, node_id)

    def _hits(self, path: str, params: dict[str, str], kind: str) -> Hits:
        # A live search may take the per-Node timeout, plus the Network's own work.
        timeout = max(self.http.timeout, float(params["timeout"]) + 10)
        answer = self.http.json("GET", path, params=params, timeout=timeout)
        hits = (
            SearchHit(
                node_id=hit["node_id"],
                node_url=hit["node_url"],
                node_status=hit["node_status"],
                routed_url=self.node_url(hit["node_id"]),
                **{kind: hit[kind]},
            )
            for hit in answer["results"]
        )
        return Hits(hits, answer.get("nodes_searched", 0), answer.get("unanswered"))


def _live(live: bool, timeout: float) -> dict[str, str]:
    return {"live": "true" if live else "false", "timeout": f"{timeout:g}"}
