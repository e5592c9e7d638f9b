"""``GET /catalogue``: what this Node publishes to a Network, public and filtered like search."""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app
from pydantic import BaseModel, Field

from pygrid.data_centric.specs import Strict
from pygrid.network.catalogue import node_catalogue
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint

bp = Blueprint("catalogue", __name__)


class CatalogueQuery(Strict):
    """``GET /catalogue``: every tag must match; ``q`` matches name, description or tags."""

    tags: Annotated[str, Field(max_length=2000)] = ""
    q: Annotated[str, Field(max_length=200)] | None = None


class Column(BaseModel):
    """A published column: its name and type, never its values."""

    name: str
    dtype: str
    shape: list[int]


class DatasetEntry(BaseModel):
    """A dataset's public metadata."""

    id: int
    name: str
    description: str
    tags: list[str]
    rows: int
    columns: list[Column]
    mock_url: str


class ProcessEntry(BaseModel):
    """A hosted FL process."""

    name: str
    version: str
    state: str
    cycles_done: int


class Load(BaseModel):
    """How busy the Node is."""

    queued_jobs: int
    running_jobs: int
    workers_seen: int


class Catalogue(BaseModel):
    """The catalogue (docs/network.md)."""

    node_id: str
    datasets: list[DatasetEntry]
    processes: list[ProcessEntry]
    load: Load


@endpoint(
    bp,
    "/catalogue",
    summary="Public catalogue: dataset metadata, FL processes and load",
    public=True,
    query=CatalogueQuery,
    response=Catalogue,
)
def catalogue(query: CatalogueQuery) -> Catalogue:
    """The catalogue, datasets filtered by every tag in ``tags`` and by ``q``."""
    node_id = current_app.config["PYGRID_SETTINGS"].id
    return Catalogue.model_validate(node_catalogue(db_session(), node_id, query.tags, query.q))
