"""The Network's registry of Nodes: join, heartbeat, leave, remove, and each Node's status.

A status is computed when read, from ``last_seen`` and the Node's own heartbeat interval
(docs/network.md), never stored, so it cannot go stale itself. Every function that judges
time takes ``now`` so that tests (and the dashboard) need no clock of their own.

Writes that race (a heartbeat against a removal, two Nodes joining with one id) are
compare-and-set UPDATEs or a primary-key INSERT: whoever loses gets a clear 4xx, never a 500.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid.auth.opaque import hash_secret, is_secret_text, new_secret
from pygrid.db.models import GridNode, utcnow
from pygrid.errors import PyGridError
from pygrid.network import tokens

CREDENTIAL_PREFIX = "pgn_"
# Same shape as a server id (ServerSettings.id): it is also a path segment of /nodes/<id>/...
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NodeId = Annotated[str, Field(min_length=1, max_length=64, pattern=NODE_ID_PATTERN)]
# http(s)://host[:port][/path], no query or fragment: /catalogue and routed paths are appended.
NodeUrl = Annotated[
    str, Field(min_length=8, max_length=500, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
]

ONLINE_INTERVALS = 3
STALE_INTERVALS = 10
STATUSES = ("online", "stale", "offline", "removed")


# ---- errors: detail.code is the contract's name for each --------------------------------------


class RegistryError(PyGridError):
    """A registry refusal whose ``detail.code`` names it (docs/network.md)."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message, {"code": self.code, **(detail or {})})


class NodeIdTaken(RegistryError):
    """A registered (not removed) Node already has this id."""

    status = 409
    code = "node_id_taken"


class UnknownCredential(RegistryError):
    """No Node holds this credential (never issued, or replaced by a later join)."""

    status = 401
    code = "unknown_credential"


class NotYourNodeId(RegistryError):
    """The credential belongs to another Node than the one the body names."""

    status = 403
    code = "not_your_node_id"


class NodeRemoved(RegistryError):
    """An admin removed this Node; its credential is dead until it joins again."""

    status = 410
    code = "node_removed"


class UnknownNode(RegistryError):
    """No registered Node has this id (or it was removed)."""

    status = 404
    code = "unknown_node"


class NodeOffline(RegistryError):
    """The Node is registered but offline: nothing is sent to it."""

    status = 502
    code = "node_offline"


# ---- the catalogue a Node publishes -----------------------------------------------------------

Tag = Annotated[str, Field(min_length=1, max_length=64)]


class CatalogueDataset(BaseModel):
    """A dataset's metadata as a Node publishes it (fields beyond these are kept as given)."""

    model_config = ConfigDict(extra="allow")

    id: int | str
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=5000)] = ""
    tags: Annotated[list[Tag], Field(max_length=100)] = []
    rows: Annotated[int, Field(ge=0)] | None = None
    columns: Annotated[list[dict[str, Any]], Field(max_length=100_000)] = []
    mock_url: Annotated[str, Field(max_length=500)] | None = None


class CatalogueProcess(BaseModel):
    """A hosted FL process as a Node publishes it."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[str, Field(min_length=1, max_length=50)]
    state: Annotated[str, Field(max_length=32)] | None = None
    cycles_done: Annotated[int, Field(ge=0)] | None = None


class Catalogue(BaseModel):
    """What a Node publishes: dataset metadata, hosted processes, load. Never rows."""

    model_config = ConfigDict(extra="allow")

    node_id: NodeId | None = None
    datasets: Annotated[list[CatalogueDataset], Field(max_length=10_000)] = []
    processes: Annotated[list[CatalogueProcess], Field(max_length=10_000)] = []
    load: dict[str, Any] = {}

    @model_validator(mode="after")
    def _tags_are_lower_case(self) -> Catalogue:
        # Nodes lower-case tags already; doing it here too makes search independent of that.
        for dataset in self.datasets:
            dataset.tags = [tag.strip().lower() for tag in dataset.tags]
        return self


def stored_catalogue(node_id: str, catalogue: Catalogue) -> dict[str, Any]:
    """The catalogue as kept in the database; NotYourNodeId (403) if it names another Node."""
    if catalogue.node_id is not None and catalogue.node_id != node_id:
        raise NotYourNodeId(
            f"the catalogue is for Node {catalogue.node_id!r}, but this is Node {node_id!r}",
            {"node_id": node_id, "catalogue_node_id": catalogue.node_id},
        )
    data = catalogue.model_dump(mode="json")
    data["node_id"] = node_id
    return data


# ---- status -----------------------------------------------------------------------------------


def status(node: GridNode, now: datetime | None = None) -> str:
    """``online``, ``stale``, ``offline`` or ``removed``, judged by the Node's own interval."""
    if node.removed_at is not None:
        return "removed"
    if node.left_at is not None and node.left_at >= node.last_seen:
        return "offline"
    age = ((now or utcnow()) - node.last_seen).total_seconds()
    if age <= ONLINE_INTERVALS * node.heartbeat_seconds:
        return "online"
    if age <= STALE_INTERVALS * node.heartbeat_seconds:
        return "stale"
    return "offline"


def iso(moment: datetime) -> str:
    """A time as the API writes it: ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def node_view(node: GridNode, now: datetime | None = None) -> dict[str, Any]:
    """One Node as ``GET /registry/nodes`` shows it (times as ISO 8601 strings)."""
    catalogue = node.catalogue or {}
    return {
        "id": node.id,
        "url": node.url,
        "status": status(node, now),
        "last_seen": iso(node.last_seen),
        "joined_at": iso(node.joined_at),
        "heartbeat_seconds": node.heartbeat_seconds,
        "datasets": catalogue.get("datasets", []),
        "processes": catalogue.get("processes", []),
        "load": catalogue.get("load", {}),
    }


def registered(session: Session) -> list[GridNode]:
    """Every Node not removed, by id."""
    return list(
        session.scalars(select(GridNode).where(GridNode.removed_at.is_(None)).order_by(GridNode.id))
    )


def node_views(session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every registered Node as in ``GET /registry/nodes`` (removed ones left out), by id."""
    now = now or utcnow()
    return [node_view(node, now) for node in registered(session)]


def route_target(session: Session, node_id: str, now: datetime | None = None) -> str:
    """The URL to forward a request for ``node_id`` to.

    UnknownNode (404) for an unknown or removed Node, NodeOffline (502) for an offline one; a
    stale Node is still tried (it may only have missed heartbeats).
    """
    node = session.get(GridNode, node_id)
    if node is None or node.removed_at is not None:
        raise UnknownNode(f"no Node {node_id!r} is registered with this Network")
    state = status(node, now)
    if state == "offline":
        raise NodeOffline(
            f"Node {node_id!r} is offline (last heard of at {iso(node.last_seen)})",
            {"node_id": node_id, "last_seen": iso(node.last_seen)},
        )
    return node.url


# ---- join, heartbeat, leave, remove -----------------------------------------------------------


def join(
    session: Session,
    join_token: str,
    node_id: str,
    url: str,
    heartbeat_seconds: float,
    catalogue: Catalogue,
    now: datetime | None = None,
) -> tuple[GridNode, str]:
    """Register a Node, spending one use of ``join_token``; the Node and its new credential.

    The token is checked first (401 says why), then the id (409 if a Node that was not
    removed holds it: no use is spent then), then a use is spent and the Node stored in one
    transaction, so a Node that loses a race for the id does not cost a use either.
    """
    now = now or utcnow()
    token = tokens.check(session, join_token, now)
    published = stored_catalogue(node_id, catalogue)
    existing = session.get(GridNode, node_id)
    if existing is not None and existing.removed_at is None:
        raise _taken(node_id)
    credential = CREDENTIAL_PREFIX + new_secret()
    values: dict[str, Any] = {
        "credential_hash": hash_secret(credential),
        "url": url.rstrip("/"),
        "heartbeat_seconds": heartbeat_seconds,
        "catalogue": published,
        "join_token_id": token.id,
        "joined_at": now,
        "last_seen": now,
        "left_at": None,
        "removed_at": None,
    }
    tokens.spend(session, token, now)
    try:
        if existing is None:
            session.add(GridNode(id=node_id, **values))
            session.flush()
        else:
            # A removed Node comes back: only if nobody else took the id since we looked.
            taken = session.execute(
                update(GridNode)
                .where(GridNode.id == node_id, GridNode.removed_at.is_not(None))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise _taken(node_id)
        session.commit()
    except (IntegrityError, NodeIdTaken):
        session.rollback()  # the token's use goes back with it
        raise _taken(node_id) from None
    session.expire_all()
    node = session.get(GridNode, node_id)
    assert node is not None
    return node, credential


def _taken(node_id: str) -> NodeIdTaken:
    return NodeIdTaken(
        f"node id {node_id!r} is taken by a registered Node; if that Node is this one and "
        f"lost its credential, an admin can free the id with: pygrid nodes remove {node_id}",
        {"node_id": node_id},
    )


def authenticate(session: Session, credential: str, node_id: str) -> GridNode:
    """The Node holding ``credential``, which must be ``node_id`` and not removed."""
    node = None
    if is_secret_text(CREDENTIAL_PREFIX, credential):
        node = session.scalar(
            select(GridNode).where(GridNode.credential_hash == hash_secret(credential))
        )
    if node is None:
        raise UnknownCredential(
            "this Network knows no Node with that credential: join again with a join token"
        )
    if node.id != node_id:
        raise NotYourNodeId(
            f"this credential belongs to another Node than {node_id!r}", {"node_id": node_id}
        )
    if node.removed_at is not None:
        raise NodeRemoved(
            f"Node {node_id!r} was removed from this Network at "
            f"{iso(node.removed_at)}; join again with a new join token",
            {"node_id": node_id},
        )
    return node


def _touch(session: Session, node: GridNode, credential: str, values: dict[str, Any]) -> GridNode:
    """Write ``values`` to an authenticated Node only if it still holds the credential and was
    not removed meanwhile (compare-and-set); otherwise refuse as authenticate now would."""
    written = session.execute(
        update(GridNode)
        .where(
            GridNode.id == node.id,
            GridNode.credential_hash == node.credential_hash,
            GridNode.removed_at.is_(None),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if written.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        session.expire_all()
        authenticate(session, credential, node.id)  # raises the error that fits now
        raise UnknownCredential("the credential changed while this request ran; try again")
    session.commit()
    session.refresh(node)
    return node


def heartbeat(
    session: Session,
    credential: str,
    node_id: str,
    url: str,
    catalogue: Catalogue,
    now: datetime | None = None,
) -> GridNode:
    """Record that a Node is alive, where it is and what it publishes now."""
    node = authenticate(session, credential, node_id)
    published = stored_catalogue(node_id, catalogue)
    values = {"url": url.rstrip("/"), "catalogue": published, "last_seen": now or utcnow()}
    return _touch(session, node, credential, values)


def leave(session: Session, credential: str, node_id: str, now: datetime | None = None) -> GridNode:
    """A Node says goodbye: offline until its next heartbeat."""
    node = authenticate(session, credential, node_id)
    return _touch(session, node, credential, {"left_at": now or utcnow()})


def remove(session: Session, node_id: str, now: datetime | None = None) -> GridNode:
    """An admin removes a Node: its credential is dead, its id free for a new join."""
    node = session.get(GridNode, node_id)
    if node is None or node.removed_at is not None:
        raise UnknownNode(f"no Node {node_id!r} is registered with this Network")
    node.removed_at = now or utcnow()
    session.commit()
    return node
