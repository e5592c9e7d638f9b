"""``/registry/*``: join tokens, Nodes joining, heartbeating and leaving, the list of Nodes.

Views parse and shape; every decision is in ``pygrid.network.registry`` and ``.tokens``. Join,
heartbeat and leave are public routes: they authenticate the join token or the Node's
credential themselves, since no user token is involved (docs/network.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from flask import Blueprint, Response, g
from pydantic import BaseModel, Field

from pygrid.auth.roles import Permission
from pygrid.data_centric.specs import Strict
from pygrid.errors import Unauthorized
from pygrid.network import registry, tokens
from pygrid.network.registry import Catalogue, NodeId, NodeUrl, UnknownCredential
from pygrid.server.database import db_session
from pygrid.server.endpoint import bearer_token, endpoint

bp = Blueprint("network_registry", __name__, url_prefix="/registry")


# ---- request models -------------------------------------------------------------------------


class JoinTokenRequest(Strict):
    """``POST join-tokens``."""

    name: Annotated[str, Field(max_length=100)] = ""
    uses: Annotated[int, Field(ge=1, le=1000)] = 1
    expires_in_hours: Annotated[float, Field(gt=0, le=8760)] = 24


class JoinRequest(Strict):
    """``POST join``: a Node spends a join token and says who and where it is."""

    join_token: Annotated[str, Field(min_length=1, max_length=200)]
    node_id: NodeId
    url: NodeUrl
    heartbeat_seconds: Annotated[float, Field(ge=0.2, le=3600)] = 10.0
    catalogue: Catalogue = Field(default_factory=Catalogue)


class HeartbeatRequest(Strict):
    """``POST heartbeat``: still alive, here, publishing this."""

    node_id: NodeId
    url: NodeUrl
    catalogue: Catalogue = Field(default_factory=Catalogue)


class LeaveRequest(Strict):
    """``POST leave``."""

    node_id: NodeId


# ---- response models ------------------------------------------------------------------------


class NewJoinToken(BaseModel):
    """A new join token: ``token`` is shown this once."""

    id: int
    name: str
    token: str
    uses_left: int
    expires_at: datetime


class JoinTokenOut(BaseModel):
    """A join token (never its secret)."""

    id: int
    name: str
    uses_left: int
    expires_at: datetime
    revoked: bool
    created_at: datetime


class JoinTokenList(BaseModel):
    """Join tokens, newest first."""

    tokens: list[JoinTokenOut]


class Joined(BaseModel):
    """A Node's credential for heartbeat and leave: shown this once."""

    node_id: str
    credential: str
    heartbeat_seconds: float


class Alive(BaseModel):
    """A Node's status after a heartbeat."""

    node_id: str
    status: str
    heartbeat_seconds: float


class Left(BaseModel):
    """A Node's status after leaving."""

    node_id: str
    status: str


class NodeOut(BaseModel):
    """A registered Node and what it publishes."""

    id: str
    url: str
    status: str
    last_seen: datetime
    joined_at: datetime
    heartbeat_seconds: float
    datasets: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    load: dict[str, Any]


class NodeList(BaseModel):
    """Registered Nodes (removed ones left out), by id."""

    nodes: list[NodeOut]


# ---- join tokens ----------------------------------------------------------------------------


@endpoint(
    bp,
    "/join-tokens",
    methods=("POST",),
    summary="Create a join token for Nodes (shown once)",
    permission=Permission.manage_nodes,
    body=JoinTokenRequest,
    response=NewJoinToken,
    status=201,
)
def create_join_token(body: JoinTokenRequest) -> NewJoinToken:
    """For ``pygrid node --network URL --network-token T``."""
    token, text = tokens.create_token(
        db_session(), g.user, body.name, body.uses, body.expires_in_hours
    )
    return NewJoinToken(
        id=token.id,
        name=token.name,
        token=text,
        uses_left=token.uses_left,
        expires_at=token.expires_at,
    )


@endpoint(
    bp,
    "/join-tokens",
    summary="Join tokens: uses left, expiry, revoked",
    permission=Permission.manage_nodes,
    response=JoinTokenList,
)
def list_join_tokens() -> JoinTokenList:
    """Never the secrets."""
    found = tokens.list_tokens(db_session())
    return JoinTokenList(tokens=[JoinTokenOut.model_validate(tokens.token_json(t)) for t in found])


@endpoint(
    bp,
    "/join-tokens/<int:token_id>",
    methods=("DELETE",),
    summary="Revoke a join token",
    permission=Permission.manage_nodes,
    status=204,
)
def revoke_join_token(token_id: int) -> Response:
    """Nodes that joined with it stay; nobody joins with it any more."""
    tokens.revoke_token(db_session(), token_id)
    return Response(status=204)


# ---- Nodes ----------------------------------------------------------------------------------


def _credential() -> str:
    """The Node's credential from ``Authorization: Bearer pgn_...``."""
    try:
        return bearer_token()
    except Unauthorized:
        raise UnknownCredential(
            "send the credential this Network issued at join as Authorization: Bearer pgn_..."
        ) from None


@endpoint(
    bp,
    "/join",
    methods=("POST",),
    summary="A Node joins with a join token and gets its credential",
    public=True,
    body=JoinRequest,
    response=Joined,
    status=201,
)
def join(body: JoinRequest) -> Joined:
    """Authenticated by the join token in the body."""
    node, credential = registry.join(
        db_session(),
        body.join_token,
        body.node_id,
        body.url,
        body.heartbeat_seconds,
        body.catalogue,
    )
    return Joined(node_id=node.id, credential=credential, heartbeat_seconds=node.heartbeat_seconds)


@endpoint(
    bp,
    "/heartbeat",
    methods=("POST",),
    summary="A Node says it is alive and what it publishes",
    public=True,
    body=HeartbeatRequest,
    response=Alive,
)
def heartbeat(body: HeartbeatRequest) -> Alive:
    """Authenticated by the Node's credential (Bearer)."""
    session = db_session()
    node = registry.heartbeat(session, _credential(), body.node_id, body.url, body.catalogue)
    return Alive(
        node_id=node.id, status=registry.status(node), heartbeat_seconds=node.heartbeat_seconds
    )


@endpoint(
    bp,
    "/leave",
    methods=("POST",),
    summary="A Node says goodbye (offline until its next heartbeat)",
    public=True,
    body=LeaveRequest,
    response=Left,
)
def leave(body: LeaveRequest) -> Left:
    """Authenticated by the Node's credential (Bearer)."""
    node = registry.leave(db_session(), _credential(), body.node_id)
    return Left(node_id=node.id, status="offline")


@endpoint(
    bp,
    "/nodes",
    summary="Registered Nodes with their status and catalogue",
    public=True,
    response=NodeList,
)
def list_nodes() -> NodeList:
    """Status is computed now, from each Node's last heartbeat and its own interval."""
    return NodeList.model_validate({"nodes": registry.node_views(db_session())})


@endpoint(
    bp,
    "/nodes/<node_id>",
    methods=("DELETE",),
    summary="Remove a Node: its credential dies, its next heartbeat gets 410",
    permission=Permission.manage_nodes,
    status=204,
)
def remove_node(node_id: str) -> Response:
    """It may join again with a new join token."""
    registry.remove(db_session(), node_id)
    return Response(status=204)
