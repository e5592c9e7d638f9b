"""The Network admin commands (``pygrid network-token``, ``pygrid nodes``) as an Owner runs them
against a real ``pygrid network``; every failure is one line and exit status 1."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.servers import Server, free_port, run_cli, running
from tests.support.users import bearer


def local(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request to 127.0.0.1, never through a proxy from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, timeout=60, **kwargs)


OWNER = {"PYGRID_OWNER_EMAIL": "owner@example.org", "PYGRID_OWNER_PASSWORD": "owner-password-1"}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("network")
    port = free_port()
    args = ["network", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(args, port, tmp / "log", env=OWNER) as server:
        yield server


def pygrid(network: Server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``pygrid ARGS`` as the Network's Owner (``env`` overrides)."""
    owner = {
        "PYGRID_NETWORK": network.url,
        "PYGRID_EMAIL": OWNER["PYGRID_OWNER_EMAIL"],
        "PYGRID_PASSWORD": OWNER["PYGRID_OWNER_PASSWORD"],
    }
    return run_cli(list(args), env={**owner, **env})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line a failing command printed on stderr."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0].removeprefix("Error: ")


def join(network: Server, token: str, node_id: str) -> str:
    """Join as a Node would (over HTTP); the credential."""
    body = {
        "join_token": token,
        "node_id": node_id,
        "url": "http://127.0.0.1:1",
        "heartbeat_seconds": 5,
        "catalogue": {"datasets": [{"id": 1, "name": "digits", "tags": ["digits"]}]},
    }
    response = local("POST", f"{network.url}/registry/join", json=body)
    assert response.status_code == 201, response.text
    credential: str = response.json()["credential"]
    return credential


def test_an_owner_creates_lists_and_revokes_join_tokens(network: Server) -> None:
    # Execute
    created = ok(pygrid(network, "network-token", "create", "--name", "lab", "--uses", "2"))
    token = created.splitlines()[1]
    listed = as_json(pygrid(network, "network-token", "list", "--format", "json"))
    token_id = token.split("_")[1]
    revoked = ok(pygrid(network, "network-token", "revoke", token_id))
    table = ok(pygrid(network, "network-token", "list"))
    refused = local(
        "POST",
        f"{network.url}/registry/join",
        json={"join_token": token, "node_id": "late", "url": "http://127.0.0.1:1"},
    )
    # Assert
    assert created.startswith(f"Join token {token_id} 'lab' (2 use(s), expires ")
    assert token.startswith("pgj_")
    assert f"pygrid node --network {network.url} --network-token {token}" in created
    mine = next(t for t in listed if str(t["id"]) == token_id)
    assert mine["name"] == "lab" and mine["uses_left"] == 2 and mine["revoked"] is False
    assert "token" not in mine
    assert revoked.strip() == f"Revoked join token {token_id}"
    assert "revoked" in table and token not in table
    assert refused.status_code == 401


def test_nodes_list_shows_status_and_last_heartbeat_and_remove_frees_the_id(
    network: Server,
) -> None:
    # Prepare
    token = ok(pygrid(network, "network-token", "create", "--uses", "3")).splitlines()[1]
    credential = join(network, token, "alice")
    join(network, token, "bob")
    # Execute
    listed = as_json(pygrid(network, "nodes", "list", "--format", "json"))
    table = ok(pygrid(network, "nodes", "list", PYGRID_EMAIL="", PYGRID_PASSWORD=""))
    removed = ok(pygrid(network, "nodes", "remove", "bob"))
    after = as_json(pygrid(network, "nodes", "list", "--format", "json"))
    beat = local(
        "POST",
        f"{network.url}/registry/heartbeat",
        json={"node_id": "alice", "url": "http://127.0.0.1:1"},
        headers=bearer(credential),
    )
    # Assert
    by_id = {node["id"]: node for node in listed}
    assert {"alice", "bob"} <= set(by_id)
    assert by_id["alice"]["status"] == "online" and by_id["alice"]["heartbeat_seconds"] == 5
    assert "last heartbeat (UTC)" in table and "alice" in table and "online" in table
    assert by_id["alice"]["last_seen"][:10] in table
    assert removed.strip() == "Removed Node bob"
    assert "bob" not in {node["id"] for node in after}
    assert beat.status_code == 200
    assert join(network, token, "bob").startswith("pgn_")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["nodes", "remove", "nobody"], {}, "no Node 'nobody' is registered"),
        (["network-token", "revoke", "9999"], {}, "no join token with id 9999"),
        (["network-token", "list"], {"PYGRID_PASSWORD": "wrong-password"}, "refused the login"),
        (["network-token", "list"], {"PYGRID_EMAIL": ""}, "--network needs a user"),
        (["nodes", "list"], {"PYGRID_NETWORK": "ftp://x"}, "--network must be an http(s) URL"),
        (["nodes", "list"], {"PYGRID_NETWORK": "http://127.0.0.1:1"}, "cannot reach"),
    ],
)
def test_failures_are_one_line(
    network: Server, args: list[str], env: dict[str, str], says: str
) -> None:
    assert says in one_error_line(pygrid(network, *args, **env))
