"""``pygrid up`` / ``status`` / ``down`` as a user runs them: real processes on 127.0.0.1, no mocks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

pytestmark = pytest.mark.slow

NODES = ("alice", "bob")


@dataclass
class Grid:
    """Where a test grid lives and how it was started."""

    home: Path
    base_port: int
    network_port: int
    up: subprocess.CompletedProcess[str] | None = None

    @property
    def local(self) -> Path:
        return self.home / "local"

    @property
    def state_file(self) -> Path:
        return self.local / "grid.json"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYGRID_HOME": str(self.home)}

    def pygrid(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``pygrid`` command as a user would, in its own process."""
        return subprocess.run(
            [sys.executable, "-m", "pygrid.cli", *args],
            env=self.env(),
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """``pygrid up`` with this grid's Nodes and ports."""
        return self.pygrid(
            "up", "--nodes", ",".join(NODES),
            "--base-port", str(self.base_port), "--network-port", str(self.network_port),
        )  # fmt: skip

    def members(self) -> list[dict[str, Any]]:
        """What grid.json records; empty when there is no grid."""
        if not self.state_file.exists():
            return []
        members: list[dict[str, Any]] = json.loads(self.state_file.read_text())["members"]
        return members


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _free_ports() -> tuple[int, int]:
    """A base port with len(NODES) consecutive free ports, and a free Network port apart from them."""
    for _ in range(100):
        base = _free_port()
        nodes = range(base, base + len(NODES))
        network = _free_port()
        if base + len(NODES) <= 65535 and all(map(_is_free, nodes)) and network not in nodes:
            return base, network
    raise RuntimeError("no free consecutive ports on 127.0.0.1")


def _same_process_alive(pid: int, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _processes_using(path: Path) -> list[psutil.Process]:
    """Processes whose command line mentions ``path``: what a grid under it would start."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _tear_down(grid: Grid) -> None:
    recorded = grid.members()
    grid.pygrid("down")
    # Last resort if `down` failed: never leave a server of this test behind.
    for member in recorded:
        if member.get("pid") and _same_process_alive(member["pid"], member.get("create_time")):
            proc = psutil.Process(member["pid"])
            for child in proc.children(recursive=True):
                child.kill()
            proc.kill()


@pytest.fixture
def new_grid(tmp_path: Path) -> Iterator[Grid]:
    """An empty PyGrid home and free ports; whatever starts there is stopped afterwards."""
    base, network = _free_ports()
    grid = Grid(home=tmp_path / "pygrid-home", base_port=base, network_port=network)
    grid.home.mkdir()
    try:
        yield grid
    finally:
        _tear_down(grid)


@pytest.fixture(scope="module")
def running_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    """One grid (a Network, alice and bob) that the read-only tests share."""
    base, network = _free_ports()
    grid = Grid(tmp_path_factory.mktemp("grid") / "pygrid-home", base, network)
    grid.home.mkdir()
    try:
        grid.up = grid.start()
        assert grid.up.returncode == 0, grid.up.stderr
        yield grid
    finally:
        _tear_down(grid)


def _http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names
    return session


def test_up_prints_every_member_and_the_credentials_file(running_grid: Grid) -> None:
    assert running_grid.up is not None
    out = running_grid.up.stdout
    assert "The local grid is up" in out
    for name in ("network", *NODES):
        assert name in out
    assert f"http://127.0.0.1:{running_grid.network_port}" in out
    assert f"http://127.0.0.1:{running_grid.base_port}" in out
    assert f"http://127.0.0.1:{running_grid.base_port + 1}" in out
    for member in running_grid.members():
        assert str(member["pid"]) in out
        assert member["log"] in out
    assert str(running_grid.local / "credentials.json") in out


def test_credentials_file_is_private_and_logs_in_on_a_node(running_grid: Grid) -> None:
    path = running_grid.local / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = json.loads(path.read_text())
    alice = next(m for m in running_grid.members() if m["name"] == "alice")

    with _http() as http:
        response = http.post(
            f"{alice['url']}/users/login",
            json={"email": credentials["email"], "password": credentials["password"]},
            timeout=10,
        )

    assert response.status_code == 200, response.text
    assert response.json()["token"]


def test_status_json_shows_three_healthy_members(running_grid: Grid) -> None:
    result = running_grid.pygrid("status", "--format", "json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cloud"] == []
    assert sorted(m["name"] for m in report["local"]) == sorted(["network", *NODES])
    for member in report["local"]:
        assert member["alive"] is True
        assert member["health"] == "healthy"
        assert member["version"]
        assert member["uptime_seconds"] >= 0
        expected = "online" if member["app"] == "node" else None
        assert member["network_status"] == expected, member


def _registry(grid: Grid) -> dict[str, dict[str, Any]]:
    with _http() as http:
        response = http.get(f"http://127.0.0.1:{grid.network_port}/registry/nodes", timeout=10)
    assert response.status_code == 200, response.text
    return {node["id"]: node for node in response.json()["nodes"]}


def _owner_session(grid: Grid) -> requests.Session:
    credentials = json.loads((grid.local / "credentials.json").read_text())
    http = _http()
    login = http.post(
        f"http://127.0.0.1:{grid.network_port}/users/login",
        json={"email": credentials["email"], "password": credentials["password"]},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    http.headers["Authorization"] = f"Bearer {login.json()['token']}"
    return http


def test_every_node_is_online_in_the_network_after_up(running_grid: Grid) -> None:
    nodes = _registry(running_grid)

    assert sorted(nodes) == sorted(NODES)
    for member in running_grid.members():
        if member["app"] == "node":
            assert nodes[member["name"]]["status"] == "online"
            assert nodes[member["name"]]["url"] == member["url"]
            assert (running_grid.local / "data" / member["name"] / "network.json").exists()


def test_join_tokens_reach_the_nodes_in_their_environment_not_their_command_line(
    running_grid: Grid,
) -> None:
    for member in running_grid.members():
        proc = psutil.Process(member["pid"])
        assert not any("pgj_" in part for part in proc.cmdline())
        token = proc.environ().get("NETWORK_TOKEN")
        if member["app"] == "node":
            assert token and token.startswith("pgj_")
        else:
            assert token is None


def test_status_table_shows_each_node_online_in_the_network(running_grid: Grid) -> None:
    result = running_grid.pygrid("status")

    assert result.returncode == 0, result.stderr
    assert "Network" in result.stdout
    for line in result.stdout.splitlines():
        if any(f" {name} " in f" {line} " for name in NODES):
            assert "online" in line, line


def test_second_up_says_already_up_and_changes_nothing(running_grid: Grid) -> None:
    before = running_grid.members()

    result = running_grid.start()

    assert result.returncode == 0, result.stderr
    assert "already up" in result.stdout
    assert running_grid.members() == before
    assert all(_same_process_alive(m["pid"], m["create_time"]) for m in before)


def test_down_stops_exactly_the_grid_processes(new_grid: Grid) -> None:
    assert new_grid.start().returncode == 0
    members = new_grid.members()
    processes = [psutil.Process(m["pid"]) for m in members]
    workers = [(c.pid, c.create_time()) for p in processes for c in p.children(recursive=True)]
    bystander = psutil.Process()

    result = new_grid.pygrid("down")

    assert result.returncode == 0, result.stderr
    for member in members:
        assert f"pid {member['pid']}" in result.stdout
        assert not _same_process_alive(member["pid"], member["create_time"])
    assert workers
    assert not any(_same_process_alive(pid, created) for pid, created in workers)
    assert bystander.is_running()
    assert not new_grid.state_file.exists()
    status = new_grid.pygrid("status", "--format", "json")
    assert status.returncode == 0
    assert json.loads(status.stdout) == {"local": [], "cloud": []}
    assert "No local grid is running" in new_grid.pygrid("status").stdout
    assert "No local grid is running" in new_grid.pygrid("down").stdout


def test_a_second_up_brings_the_nodes_back_with_their_saved_credentials(new_grid: Grid) -> None:
    assert new_grid.start().returncode == 0
    assert new_grid.pygrid("down").returncode == 0
    # bob lost his credential: the Network still lists him, so `up` frees his id to join again.
    (new_grid.local / "data" / "bob" / "network.json").unlink()

    again = new_grid.start()

    assert again.returncode == 0, again.stderr
    assert all(node["status"] == "online" for node in _registry(new_grid).values())
    with _owner_session(new_grid) as http:
        listed = http.get(
            f"http://127.0.0.1:{new_grid.network_port}/registry/join-tokens", timeout=10
        )
    tokens = sorted(listed.json()["tokens"], key=lambda t: t["id"])

    def history(node: str) -> list[tuple[bool, int]]:
        return [(t["revoked"], t["uses_left"]) for t in tokens if t["name"] == f"local-{node}"]

    # The first up's tokens were spent and are now revoked; alice did not need her second.
    assert history("alice") == [(True, 0), (False, 1)]
    assert history("bob") == [(True, 0), (False, 0)]


def test_up_refuses_a_port_in_use_and_starts_nothing(new_grid: Grid) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", new_grid.base_port))
        holder.listen()

        result = new_grid.start()

    assert result.returncode == 1
    error = result.stderr.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("Error: ")
    assert f"port {new_grid.base_port}" in error[0]
    if sys.platform == "linux":
        assert f"pid {os.getpid()}" in error[0]
    assert not new_grid.state_file.exists()
    assert _processes_using(new_grid.home) == []


def test_up_refuses_an_unusable_data_dir_and_starts_nothing(new_grid: Grid) -> None:
    new_grid.local.mkdir()
    (new_grid.local / "data").write_text("a file where the data folder should be")

    result = new_grid.start()

    assert result.returncode == 1
    error = result.stderr.strip().splitlines()
    assert len(error) == 1
    assert "data" in error[0] and "not a folder" in error[0]
    assert not new_grid.state_file.exists()
    assert not (new_grid.local / "credentials.json").exists()
    assert _processes_using(new_grid.home) == []
