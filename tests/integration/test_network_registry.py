"""The Network's registry as an admin and as Nodes meet it: join tokens, joining, heartbeats,
leaving, removal, and each Node's status judged by its own heartbeat interval.

No test sleeps: times are injected (``now=``) or written into the database directly.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from pygrid.auth.roles import Role
from pygrid.db.models import GridNode, JoinToken, utcnow
from pygrid.errors import PyGridError
from pygrid.network import registry, tokens
from pygrid.network.registry import Catalogue
from tests.support.users import bearer

ALICE_CATALOGUE = {
    "node_id": "alice",
    "datasets": [
        {
            "id": 1,
            "name": "digits",
            "description": "Handwritten digits",
            "tags": ["digits", "images"],
            "rows": 1797,
            "columns": [{"name": "pixels", "dtype": "float32", "shape": [64]}],
            "mock_url": "/data-centric/datasets/1/mock",
        }
    ],
    "processes": [{"name": "mnist", "version": "1.0", "state": "running", "cycles_done": 3}],
    "load": {"queued_jobs": 0, "running_jobs": 0, "workers_seen": 1},
}


@pytest.fixture
def app_kind() -> str:
    """These routes exist on the Network only."""
    return "network"


@pytest.fixture
def engine(app: Any) -> Any:
    return app.extensions["pygrid.db"].engine


@pytest.fixture
def join_token(client: Any, owner_token: str) -> Callable[..., str]:
    """Make a join token as the Owner (``uses``, ``expires_in_hours``, ``name``)."""

    def make(**body: Any) -> str:
        response = client.post("/registry/join-tokens", json=body, headers=bearer(owner_token))
        assert response.status_code == 201, response.get_json()
        token: str = response.get_json()["token"]
        return token

    return make


def join_body(token: str, node_id: str = "alice", **changes: Any) -> dict[str, Any]:
    catalogue = {**ALICE_CATALOGUE, "node_id": node_id}
    return {
        "join_token": token,
        "node_id": node_id,
        "url": f"http://127.0.0.1:5000/{node_id}",
        "heartbeat_seconds": 10,
        "catalogue": catalogue,
    } | changes


@pytest.fixture
def joined(client: Any, join_token: Callable[..., str]) -> Callable[[str], str]:
    """Join a Node with a fresh token; its credential."""

    def join(node_id: str) -> str:
        response = client.post("/registry/join", json=join_body(join_token(), node_id))
        assert response.status_code == 201, response.get_json()
        credential: str = response.get_json()["credential"]
        return credential

    return join


def heartbeat(client: Any, credential: str | None, node_id: str = "alice", **body: Any) -> Any:
    headers = bearer(credential) if credential else {}
    payload = {"node_id": node_id, "url": f"http://127.0.0.1:5000/{node_id}"} | body
    return client.post("/registry/heartbeat", json=payload, headers=headers)


def nodes(client: Any) -> dict[str, dict[str, Any]]:
    response = client.get("/registry/nodes")
    assert response.status_code == 200
    return {node["id"]: node for node in response.get_json()["nodes"]}


def error_code(response: Any) -> str:
    body = response.get_json()
    assert set(body) == {"error", "detail"}, body
    code: str = body["detail"]["code"]
    return code


# ---- join tokens ------------------------------------------------------------------------------


def test_an_admin_makes_lists_and_revokes_join_tokens(client: Any, owner_token: str) -> None:
    # Prepare
    owner = bearer(owner_token)
    # Execute
    created = client.post("/registry/join-tokens", json={"name": "lab", "uses": 3}, headers=owner)
    listed = client.get("/registry/join-tokens", headers=owner).get_json()["tokens"]
    revoked = client.delete(f"/registry/join-tokens/{created.get_json()['id']}", headers=owner)
    after = client.get("/registry/join-tokens", headers=owner).get_json()["tokens"]
    unknown = client.delete("/registry/join-tokens/999", headers=owner)
    # Assert
    assert created.status_code == 201
    new = created.get_json()
    assert new["token"].startswith(f"pgj_{new['id']}_") and new["uses_left"] == 3
    expires = datetime.fromisoformat(new["expires_at"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24)
    assert listed == [
        {
            "id": new["id"],
            "name": "lab",
            "uses_left": 3,
            "expires_at": new["expires_at"],
            "revoked": False,
            "created_at": listed[0]["created_at"],
        }
    ]
    assert revoked.status_code == 204 and after[0]["revoked"] is True
    assert unknown.status_code == 404


def test_the_database_keeps_only_a_hash_of_a_join_token(
    engine: Any, join_token: Callable[..., str]
) -> None:
    text = join_token()
    with Session(engine) as session:
        stored = session.get(JoinToken, int(text.split("_")[1]))
        assert stored is not None
    assert stored.secret_hash == tokens.hash_secret(text.split("_", 2)[2])
    assert text.split("_", 2)[2] not in stored.secret_hash


@pytest.mark.parametrize(
    "body",
    [
        {"uses": 0},
        {"uses": 1001},
        {"expires_in_hours": 0},
        {"expires_in_hours": 8761},
        {"name": "x" * 101},
        {"uses": "many"},
        {"color": "red"},
    ],
)
def test_bad_join_token_requests_get_422(client: Any, owner_token: str, body: Any) -> None:
    response = client.post("/registry/join-tokens", json=body, headers=bearer(owner_token))
    assert response.status_code == 422, response.get_json()


def test_a_data_scientist_may_not_make_join_tokens(
    client: Any, user_token: Callable[[Role], str]
) -> None:
    token = user_token(Role.data_scientist)
    response = client.post("/registry/join-tokens", json={}, headers=bearer(token))
    assert response.status_code == 403
    assert client.get("/registry/join-tokens", headers=bearer(token)).status_code == 403


# ---- joining ----------------------------------------------------------------------------------


def test_a_node_joins_heartbeats_and_is_listed_online(
    client: Any, join_token: Callable[..., str]
) -> None:
    # Prepare
    body = join_body(join_token())
    # Execute
    joined = client.post("/registry/join", json=body)
    credential = joined.get_json()["credential"]
    newer = {**ALICE_CATALOGUE, "load": {"queued_jobs": 4}}
    beat = heartbeat(client, credential, url="http://10.0.0.7:5000/", catalogue=newer)
    listed = nodes(client)
    # Assert
    assert joined.status_code == 201
    assert joined.get_json() == {
        "node_id": "alice",
        "credential": credential,
        "heartbeat_seconds": 10.0,
    }
    assert credential.startswith("pgn_")
    assert beat.status_code == 200
    assert beat.get_json() == {"node_id": "alice", "status": "online", "heartbeat_seconds": 10.0}
    alice = listed["alice"]
    assert alice["status"] == "online" and alice["url"] == "http://10.0.0.7:5000"
    assert alice["datasets"] == ALICE_CATALOGUE["datasets"]
    assert alice["processes"] == ALICE_CATALOGUE["processes"]
    assert alice["load"] == {"queued_jobs": 4}
    assert alice["heartbeat_seconds"] == 10.0
    assert alice["last_seen"] >= alice["joined_at"]


def test_node_views_are_what_the_registry_lists(app: Any, client: Any, joined: Any) -> None:
    joined("alice")
    joined("bob")
    with Session(app.extensions["pygrid.db"].engine) as session:
        views = registry.node_views(session)
    assert views == client.get("/registry/nodes").get_json()["nodes"]
    assert [v["id"] for v in views] == ["alice", "bob"]


def _expire(engine: Any, token: str) -> None:
    with Session(engine) as session:
        session.execute(
            update(JoinToken)
            .where(JoinToken.id == int(token.split("_")[1]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        ("not a token", "not a join token"),
        ("forged", "join token is invalid"),
        ("unknown id", "join token is invalid"),
        ("revoked", "was revoked"),
        ("expired", "expired"),
        ("used up", "is used up"),
    ],
)
def test_a_dead_or_forged_join_token_gets_401_saying_why(
    client: Any,
    engine: Any,
    owner_token: str,
    join_token: Callable[..., str],
    spoil: str,
    says: str,
) -> None:
    # Prepare
    token = join_token()
    token_id = token.split("_")[1]
    if spoil == "not a token":
        token = "pgw_1_" + "a" * 43
    elif spoil == "forged":
        token = f"pgj_{token_id}_" + "A" * 43
    elif spoil == "unknown id":
        token = "pgj_4242_" + token.split("_", 2)[2]
    elif spoil == "revoked":
        client.delete(f"/registry/join-tokens/{token_id}", headers=bearer(owner_token))
    elif spoil == "expired":
        _expire(engine, token)
    elif spoil == "used up":
        assert client.post("/registry/join", json=join_body(token, "first")).status_code == 201
    # Execute
    response = client.post("/registry/join", json=join_body(token))
    # Assert
    assert response.status_code == 401
    assert error_code(response) == "invalid_join_token"
    assert says in response.get_json()["error"]
    assert "alice" not in nodes(client)


def test_a_taken_node_id_gets_409_and_costs_no_use(
    client: Any, owner_token: str, join_token: Callable[..., str]
) -> None:
    token = join_token(uses=2)
    first = client.post("/registry/join", json=join_body(token))
    second = client.post("/registry/join", json=join_body(token))
    listed = client.get("/registry/join-tokens", headers=bearer(owner_token)).get_json()
    assert first.status_code == 201
    assert second.status_code == 409 and error_code(second) == "node_id_taken"
    assert "pygrid nodes remove alice" in second.get_json()["error"]
    assert listed["tokens"][0]["uses_left"] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"node_id": "has space"},
        {"node_id": "-leading-dash"},
        {"node_id": "x" * 65},
        {"url": "ftp://127.0.0.1/"},
        {"url": "http://127.0.0.1:5000/?q=1"},
        {"heartbeat_seconds": 0.1},
        {"heartbeat_seconds": 3601},
        {"catalogue": {"datasets": "digits"}},
        {"catalogue": {"datasets": [{"id": 1, "name": "d", "tags": ["x" * 65]}]}},
        {"catalogue": {"processes": [{"name": "mnist"}]}},
        {"colour": "red"},
        {"join_token": ""},
    ],
)
def test_a_malformed_join_gets_422(
    client: Any, join_token: Callable[..., str], changes: dict[str, Any]
) -> None:
    response = client.post("/registry/join", json=join_body(join_token()) | changes)
    assert response.status_code == 422, response.get_json()


def test_a_catalogue_naming_another_node_is_refused(
    client: Any, join_token: Callable[..., str]
) -> None:
    body = join_body(join_token(), "mallory")
    body["catalogue"]["node_id"] = "alice"
    response = client.post("/registry/join", json=body)
    assert response.status_code == 403 and error_code(response) == "not_your_node_id"


# ---- heartbeat and leave refusals -------------------------------------------------------------


@pytest.mark.parametrize("route", ["/registry/heartbeat", "/registry/leave"])
def test_heartbeat_and_leave_refuse_anyone_but_the_node(
    client: Any, owner_token: str, joined: Callable[[str], str], route: str
) -> None:
    # Prepare
    alice = joined("alice")
    joined("bob")
    body = (
        {"node_id": "bob"} if route.endswith("leave") else {"node_id": "bob", "url": "http://x.org"}
    )

    def send(node_id: str, headers: dict[str, str]) -> Any:
        return client.post(route, json={**body, "node_id": node_id}, headers=headers)

    # Execute
    missing = send("alice", {})
    unknown = send("alice", bearer("pgn_" + "z" * 43))
    user_token = send("alice", bearer(owner_token))
    claiming_bob = send("bob", bearer(alice))
    # Assert
    assert missing.status_code == 401 and error_code(missing) == "unknown_credential"
    assert unknown.status_code == 401 and error_code(unknown) == "unknown_credential"
    assert user_token.status_code == 401 and error_code(user_token) == "unknown_credential"
    assert claiming_bob.status_code == 403 and error_code(claiming_bob) == "not_your_node_id"
    assert nodes(client)["bob"]["status"] == "online"


def test_a_removed_node_gets_410_and_may_join_again_with_a_new_token(
    client: Any, owner_token: str, join_token: Callable[..., str], joined: Callable[[str], str]
) -> None:
    # Prepare
    old = joined("alice")
    # Execute
    removed = client.delete("/registry/nodes/alice", headers=bearer(owner_token))
    again = client.delete("/registry/nodes/alice", headers=bearer(owner_token))
    beat = heartbeat(client, old)
    left = client.post("/registry/leave", json={"node_id": "alice"}, headers=bearer(old))
    listed_after_removal = nodes(client)
    rejoined = client.post("/registry/join", json=join_body(join_token()))
    new = rejoined.get_json()["credential"]
    # Assert
    assert removed.status_code == 204
    assert again.status_code == 404 and error_code(again) == "unknown_node"
    assert beat.status_code == 410 and error_code(beat) == "node_removed"
    assert left.status_code == 410 and error_code(left) == "node_removed"
    assert "alice" not in listed_after_removal
    assert rejoined.status_code == 201
    assert heartbeat(client, new).status_code == 200
    old_again = heartbeat(client, old)
    assert old_again.status_code == 401 and error_code(old_again) == "unknown_credential"
    assert nodes(client)["alice"]["status"] == "online"


def test_removing_an_unknown_node_is_404(client: Any, owner_token: str) -> None:
    response = client.delete("/registry/nodes/nobody", headers=bearer(owner_token))
    assert response.status_code == 404 and error_code(response) == "unknown_node"


# ---- status -----------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("interval", "age", "expected"),
    [
        (10, 0, "online"),
        (10, 30, "online"),
        (10, 31, "stale"),
        (10, 100, "stale"),
        (10, 101, "offline"),
        (1, 5, "stale"),
        (60, 5, "online"),
        (60, 650, "offline"),
        (0.2, 1, "stale"),
    ],
)
def test_status_follows_each_nodes_own_interval(interval: float, age: float, expected: str) -> None:
    node = GridNode(id="n", heartbeat_seconds=interval, last_seen=T0, joined_at=T0)
    assert registry.status(node, T0 + timedelta(seconds=age)) == expected


def test_leaving_is_offline_until_the_next_heartbeat() -> None:
    node = GridNode(id="n", heartbeat_seconds=10, last_seen=T0, joined_at=T0)
    node.left_at = T0 + timedelta(seconds=1)
    assert registry.status(node, T0 + timedelta(seconds=2)) == "offline"
    node.last_seen = T0 + timedelta(seconds=3)
    assert registry.status(node, T0 + timedelta(seconds=4)) == "online"
    node.removed_at = T0 + timedelta(seconds=5)
    assert registry.status(node, T0 + timedelta(seconds=6)) == "removed"


def _last_seen(engine: Any, node_id: str, seconds_ago: float) -> None:
    with Session(engine) as session:
        session.execute(
            update(GridNode)
            .where(GridNode.id == node_id)
            .values(last_seen=utcnow() - timedelta(seconds=seconds_ago))
        )
        session.commit()


def test_the_registry_shows_stale_and_offline_nodes_and_their_return(
    client: Any, engine: Any, joined: Callable[[str], str]
) -> None:
    # Prepare: three Nodes with 10 s intervals, heard of 5 s, 60 s and 200 s ago
    credentials = {node_id: joined(node_id) for node_id in ("fresh", "stale", "gone")}
    for node_id, ago in {"fresh": 5, "stale": 60, "gone": 200}.items():
        _last_seen(engine, node_id, ago)
    # Execute
    before = {node_id: node["status"] for node_id, node in nodes(client).items()}
    back = heartbeat(client, credentials["gone"], "gone")
    left = client.post(
        "/registry/leave", json={"node_id": "fresh"}, headers=bearer(credentials["fresh"])
    )
    after = {node_id: node["status"] for node_id, node in nodes(client).items()}
    # Assert
    assert before == {"fresh": "online", "stale": "stale", "gone": "offline"}
    assert back.status_code == 200 and back.get_json()["status"] == "online"
    assert left.status_code == 200 and left.get_json() == {"node_id": "fresh", "status": "offline"}
    assert after == {"fresh": "offline", "stale": "stale", "gone": "online"}


def test_route_target_names_the_url_or_says_why_not(
    app: Any, engine: Any, owner_token: str, client: Any, joined: Callable[[str], str]
) -> None:
    # Prepare
    for node_id in ("up", "tired", "down", "gone"):
        joined(node_id)
    _last_seen(engine, "tired", 60)
    _last_seen(engine, "down", 200)
    client.delete("/registry/nodes/gone", headers=bearer(owner_token))
    with Session(engine) as session:
        # Execute
        up = registry.route_target(session, "up")
        tired = registry.route_target(session, "tired")
        refusals = {}
        for node_id in ("down", "gone", "never"):
            with pytest.raises(PyGridError) as caught:
                registry.route_target(session, node_id)
            refusals[node_id] = (caught.value.status, caught.value.detail["code"])
    # Assert
    assert up == "http://127.0.0.1:5000/up" and tired == "http://127.0.0.1:5000/tired"
    assert refusals == {
        "down": (502, "node_offline"),
        "gone": (404, "unknown_node"),
        "never": (404, "unknown_node"),
    }


# ---- races ------------------------------------------------------------------------------------


def _race(engine: Any, attempts: list[tuple[str, str]]) -> list[str]:
    """Join concurrently, one session per thread; each attempt's outcome (a code or 'joined')."""
    start = threading.Barrier(len(attempts))
    outcomes: list[str] = [""] * len(attempts)

    def attempt(i: int, token: str, node_id: str) -> None:
        with Session(engine, expire_on_commit=False) as session:
            start.wait()
            try:
                registry.join(session, token, node_id, "http://127.0.0.1:1", 10.0, Catalogue())
                outcomes[i] = "joined"
            except PyGridError as exc:
                outcomes[i] = exc.detail["code"]

    threads = [
        threading.Thread(target=attempt, args=(i, token, node_id))
        for i, (token, node_id) in enumerate(attempts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def _uses_left(engine: Any, token: str) -> int:
    with Session(engine) as session:
        stored = session.get(JoinToken, int(token.split("_")[1]))
        assert stored is not None
        return stored.uses_left


def test_nodes_racing_for_a_one_use_token_let_exactly_one_join(
    engine: Any, client: Any, join_token: Callable[..., str]
) -> None:
    token = join_token(uses=1)
    outcomes = _race(engine, [(token, f"node-{i}") for i in range(8)])
    assert Counter(outcomes) == {"joined": 1, "invalid_join_token": 7}
    assert len(nodes(client)) == 1
    assert _uses_left(engine, token) == 0


def test_nodes_racing_for_one_id_let_exactly_one_join_and_spend_one_use(
    engine: Any, client: Any, owner_token: str, join_token: Callable[..., str]
) -> None:
    # also the way back in after a removal (an UPDATE, not an INSERT)
    for removed_first in (False, True):
        token = join_token(uses=10)
        if removed_first:
            client.delete("/registry/nodes/alice", headers=bearer(owner_token))
        outcomes = _race(engine, [(token, "alice")] * 6)
        assert Counter(outcomes) == {"joined": 1, "node_id_taken": 5}, removed_first
        assert _uses_left(engine, token) == 9
        assert list(nodes(client)) == ["alice"]
