"""``GET /search`` and ``GET /search-model``: datasets and FL processes across Nodes.

Public: a Network publishes only what its Nodes chose to publish. Views parse and shape; the
searching is in ``pygrid.network.search``.
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app
from flask.blueprints import BlueprintSetupState
from pydantic import BaseModel, Field, field_validator

from pygrid.data_centric.datasets import MAX_TAGS, parse_tags
from pygrid.data_centric.specs import Strict
from pygrid.errors import InvalidInput
from pygrid.network import search
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint

bp = Blueprint("network_search", __name__)

MAX_TAG_LENGTH = 50  # the Nodes' rule (pygrid.data_centric.datasets.parse_tags)
Timeout = Annotated[float, Field(ge=0.1, le=30)]


@bp.record_once
def _attach_fanout(state: BlueprintSetupState) -> None:
    search.Fanout().init_app(state.app)


# ---- request models -------------------------------------------------------------------------


class DatasetQuery(Strict):
    """``GET /search``: every tag must match; ``q`` matches name, description or tags."""

    tags: Annotated[str, Field(max_length=MAX_TAGS * (MAX_TAG_LENGTH + 1) + 100)] = ""
    q: Annotated[str, Field(max_length=200)] | None = None
    live: bool = False
    timeout: Timeout = 2.0

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: str) -> str:
        # The Nodes' own rule: a tag the Nodes would refuse must not reach them in a live search.
        try:
            return ",".join(parse_tags(value))
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @property
    def tag_list(self) -> list[str]:
        """The tags, lower-case, without blanks or repeats."""
        return [tag for tag in self.tags.split(",") if tag]


class ModelQuery(Strict):
    """``GET /search-model``: processes with this name (and version)."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    live: bool = False
    timeout: Timeout = 2.0


# ---- response models ------------------------------------------------------------------------


class Unanswered(BaseModel):
    """A Node asked live that contributed nothing, and why."""

    node_id: str
    reason: str


class DatasetHit(BaseModel):
    """A dataset a Node publishes, and where that Node is."""

    node_id: str
    node_url: str
    node_status: str
    dataset: dict[str, Any]


class ProcessHit(BaseModel):
    """An FL process a Node hosts, and where that Node is."""

    node_id: str
    node_url: str
    node_status: str
    process: dict[str, Any]


class DatasetResults(BaseModel):
    """Hits by Node id, how many Nodes were searched, which asked Nodes did not answer."""

    results: list[DatasetHit]
    nodes_searched: int
    unanswered: list[Unanswered]


class ProcessResults(BaseModel):
    """Hits by Node id, how many Nodes were searched, which asked Nodes did not answer."""

    results: list[ProcessHit]
    nodes_searched: int
    unanswered: list[Unanswered]


# ---- views ----------------------------------------------------------------------------------


def _search(
    matcher: search.Matcher, key: str, live: bool, params: dict[str, str], timeout: float
) -> dict[str, Any]:
    if not live:
        return search.cached(db_session(), matcher, key)
    fanout: search.Fanout = current_app.extensions["pygrid.fanout"]
    return search.live(db_session(), fanout, matcher, key, params, timeout)


@endpoint(
    bp,
    "/search",
    summary="Datasets across Nodes, from their catalogues or asked live",
    public=True,
    query=DatasetQuery,
    response=DatasetResults,
)
def search_datasets(query: DatasetQuery) -> DatasetResults:
    """Cached: online and stale Nodes. ``live=true``: every online Node, at most ``timeout``."""
    matcher = search.dataset_matcher(query.tag_list, query.q)
    params = {"tags": query.tags, "q": query.q or ""}
    found = _search(matcher, "dataset", query.live, params, query.timeout)
    return DatasetResults.model_validate(found)


@endpoint(
    bp,
    "/search-model",
    summary="FL processes across Nodes, by name and version",
    public=True,
    query=ModelQuery,
    response=ProcessResults,
)
def search_models(query: ModelQuery) -> ProcessResults:
    """Cached: online and stale Nodes. ``live=true``: every online Node, at most ``timeout``."""
    matcher = search.process_matcher(query.name, query.version)
    found = _search(matcher, "process", query.live, {}, query.timeout)
    return ProcessResults.model_validate(found)
