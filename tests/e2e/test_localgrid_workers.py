"""``pygrid up --workers N``: each Node gets N Workers that ``status`` shows and ``down`` stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def _pygrid(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pygrid.cli", *args],
        env={**os.environ, "PYGRID_HOME": str(home)},
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _ports() -> list[str]:
    """``up`` options for a free Node port and a different free Network port."""
    base = free_port()
    network = next(p for p in iter(free_port, None) if p != base)
    return ["--base-port", str(base), "--network-port", str(network)]


def _members(home: Path) -> list[dict[str, Any]]:
    state = home / "local" / "grid.json"
    if not state.exists():
        return []
    members: list[dict[str, Any]] = json.loads(state.read_text())["members"]
    return members


def _alive(member: dict[str, Any]) -> bool:
    try:
        proc = psutil.Process(member["pid"])
        same = abs(proc.create_time() - member["create_time"]) < 0.01
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """An empty PyGrid home; whatever grid starts there is stopped afterwards."""
    home = tmp_path / "pygrid-home"
    home.mkdir()
    try:
        yield home
    finally:
        recorded = _members(home)
        _pygrid(home, "down")
        for member in recorded:  # last resort if `down` failed
            if member.get("pid") and _alive(member):
                proc = psutil.Process(member["pid"])
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()


def test_up_with_workers_starts_them_status_shows_them_down_stops_them(home: Path) -> None:
    up = _pygrid(home, "up", "--nodes", "alice", "--workers", "2", *_ports())
    assert up.returncode == 0, up.stderr
    members = _members(home)
    workers = [m for m in members if m["app"] == "worker"]

    status = _pygrid(home, "status", "--format", "json")
    table = _pygrid(home, "status")
    again = _pygrid(home, "up", "--nodes", "alice", "--workers", "2", *_ports())
    processes = {m["name"]: psutil.Process(m["pid"]) for m in workers}
    environments = {name: proc.environ() for name, proc in processes.items()}
    command_lines = {name: proc.cmdline() for name, proc in processes.items()}
    down = _pygrid(home, "down")

    assert "a Network and 1 Node with 2 Workers" in up.stdout
    assert sorted(m["name"] for m in workers) == ["alice-worker-1", "alice-worker-2"]
    assert all(m["port"] is None and m["url"] is None and m["node"] == "alice" for m in workers)
    report = {m["name"]: m for m in json.loads(status.stdout)["local"]}
    assert set(report) == {"network", "alice", "alice-worker-1", "alice-worker-2"}
    assert all(m["health"] == "healthy" and m["alive"] for m in report.values())
    assert "alice-worker-1" in table.stdout and "All 4 members are healthy" in table.stdout
    # A second `up` changes nothing.
    assert again.returncode == 0 and "already up" in again.stdout
    # The token is in each Worker's environment, never on its command line.
    for name in processes:
        token = environments[name]["PYGRID_WORKER_TOKEN"]
        assert token.startswith("pgw_")
        assert not any(token in part for part in command_lines[name])
        assert "PYGRID_OWNER_PASSWORD" not in environments[name]
    assert down.returncode == 0, down.stderr
    for member in workers:
        assert f"Stopped {member['name']} (worker, pid {member['pid']}" in down.stdout
    assert not any(_alive(m) for m in members)
    assert _members(home) == []


def test_a_new_up_revokes_the_last_grids_worker_token(home: Path) -> None:
    ports = _ports()
    first = _pygrid(home, "up", "--nodes", "alice", "--workers", "1", *ports)
    assert first.returncode == 0, first.stderr
    assert _pygrid(home, "down").returncode == 0
    second = _pygrid(home, "up", "--nodes", "alice", "--workers", "1", *ports)
    assert second.returncode == 0, second.stderr
    alice = next(m for m in _members(home) if m["name"] == "alice")
    credentials = json.loads((home / "local" / "credentials.json").read_text())

    import requests

    with requests.Session() as http:
        http.trust_env = False
        login = http.post(f"{alice['url']}/users/login", json=credentials, timeout=30)
        http.headers["Authorization"] = f"Bearer {login.json()['token']}"
        tokens = http.get(f"{alice['url']}/data-centric/worker-tokens", timeout=30).json()

    local = [t for t in tokens["tokens"] if t["name"] == "local-alice"]
    assert len(local) == 2
    assert sum(t["revoked_at"] is None for t in local) == 1
