"""``pygrid demo model-centric`` as a user runs it: ``pygrid up``, then the demo, in real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_localgrid import Grid, _free_ports, _tear_down
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

CYCLES = 20
DEVICES = 10
NO_GRID = "Error: no local grid is running: start one with `pygrid up` or pass --node URL"
CYCLE_LINE = re.compile(r"^cycle +(\d+)/(\d+)  test accuracy (\d\.\d+)  test loss (\d+\.\d+)")
FINAL_LINE = re.compile(r"^Final test accuracy: (\d\.\d+) after (\d+) cycles")
PROCESS_URL = re.compile(r"GET (http://\S+)/model-centric/processes/(\d+)")
HOSTED_LINE = re.compile(r"^Hosted (\S+) version (\S+) on ")


class DemoGrid(Grid):
    """A test grid whose commands never see the caller's PYGRID_NODE / _EMAIL / _PASSWORD."""

    def env(self) -> dict[str, str]:
        env = super().env()
        for name in ("PYGRID_NODE", "PYGRID_EMAIL", "PYGRID_PASSWORD"):
            env.pop(name, None)
        return env


@dataclass
class Run:
    """What one demo run printed, parsed."""

    result: subprocess.CompletedProcess[str]

    def lines(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for line in self.result.stdout.splitlines() if (m := pattern.match(line))]

    @property
    def process(self) -> tuple[str, int]:
        match = PROCESS_URL.search(self.result.stdout)
        assert match, self.result.stdout
        return match[1], int(match[2])

    @property
    def version(self) -> str:
        (match,) = self.lines(HOSTED_LINE)
        return match[2]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed on stderr."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoGrid]:
    """``pygrid up --nodes alice`` in its own PyGrid home; always brought down afterwards."""
    base, network = _free_ports()
    grid = DemoGrid(tmp_path_factory.mktemp("demo") / "pygrid-home", base, network)
    grid.home.mkdir()
    try:
        grid.up = grid.pygrid(
            "up", "--nodes", "alice",
            "--base-port", str(base), "--network-port", str(network),
        )  # fmt: skip
        assert grid.up.returncode == 0, grid.up.stderr
        yield grid
    finally:
        _tear_down(grid)


@pytest.fixture(scope="module")
def demo(grid: DemoGrid) -> Run:
    """The demo with the defaults a user would type after ``pygrid up``."""
    return Run(
        grid.pygrid("demo", "model-centric", "--devices", str(DEVICES), "--cycles", str(CYCLES))
    )


def owner_session(grid: Grid, url: str) -> requests.Session:
    """A session logged in on ``url`` as the local grid's Owner."""
    credentials = json.loads((grid.local / "credentials.json").read_text())
    session = requests.Session()
    session.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names
    answer = session.post(f"{url}/users/login", json=credentials, timeout=10)
    assert answer.status_code == 200, answer.text
    session.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return session


def test_demo_prints_every_cycle_and_reaches_090(demo: Run) -> None:
    result = demo.result
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    cycles = demo.lines(CYCLE_LINE)
    assert [(int(m[1]), int(m[2])) for m in cycles] == [(k, CYCLES) for k in range(1, 21)]
    assert all(0 <= float(m[3]) <= 1 and float(m[4]) > 0 for m in cycles)
    (final,) = demo.lines(FINAL_LINE)
    assert int(final[2]) == CYCLES
    assert float(final[1]) >= 0.90
    assert final[1] == cycles[-1][3], "the final accuracy is the last cycle's"


def test_demo_trains_on_the_first_node_and_the_node_shows_every_closed_cycle(
    grid: DemoGrid, demo: Run
) -> None:
    alice = next(m for m in grid.members() if m["name"] == "alice")
    url, process_id = demo.process
    assert url == alice["url"]

    with owner_session(grid, url) as session:
        answer = session.get(f"{url}/model-centric/processes", timeout=10)

    assert answer.status_code == 200, answer.text
    process: dict[str, Any] = next(p for p in answer.json()["processes"] if p["id"] == process_id)
    assert process["name"] == "digits-demo"
    assert process["version"] == demo.version
    assert process["state"] == "completed"
    assert process["cycles_done"] == CYCLES
    assert [c["state"] for c in process["cycles"]] == ["closed"] * CYCLES
    assert [c["diffs_received"] for c in process["cycles"]] == [DEVICES] * CYCLES
    assert [c["number"] for c in process["checkpoints"]] == list(range(CYCLES + 1))


def test_the_demo_runs_again_on_the_same_node_with_a_fresh_version(
    grid: DemoGrid, demo: Run
) -> None:
    again = Run(grid.pygrid("demo", "model-centric", "--devices", "2", "--cycles", "1"))

    assert again.result.returncode == 0, again.result.stdout + again.result.stderr
    assert again.version != demo.version
    assert again.process[1] != demo.process[1]
    assert len(again.lines(CYCLE_LINE)) == 1


def test_a_taken_version_is_one_line_naming_the_version(grid: DemoGrid, demo: Run) -> None:
    result = grid.pygrid("demo", "model-centric", "--cycles", "1", "--version", demo.version)

    error = one_error_line(result)
    assert error.startswith("Error: ")
    assert f"already hosts digits-demo version {demo.version}" in error


def test_a_refused_login_is_one_line(grid: DemoGrid, demo: Run) -> None:
    url, _ = demo.process

    result = grid.pygrid(
        "demo", "model-centric", "--node", url, "--email", "owner@pygrid.local",
        "--password", "not-the-password",
    )  # fmt: skip

    error = one_error_line(result)
    assert error.startswith(f"Error: {url} refused the login of owner@pygrid.local")


def test_without_a_local_grid_it_says_so_in_one_line(tmp_path: Path) -> None:
    grid = DemoGrid(tmp_path / "empty-home", 0, 0)
    grid.home.mkdir()

    result = grid.pygrid("demo", "model-centric")

    assert one_error_line(result) == NO_GRID
    assert result.stdout == ""


def test_an_unreachable_node_is_one_line(tmp_path: Path) -> None:
    grid = DemoGrid(tmp_path / "empty-home", 0, 0)
    grid.home.mkdir()
    url = f"http://127.0.0.1:{free_port()}"

    result = subprocess.run(
        [sys.executable, "-m", "pygrid.cli", "demo", "model-centric", "--node", url],
        env={**grid.env(), "PYGRID_EMAIL": "ada@example.org", "PYGRID_PASSWORD": "a-password"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert one_error_line(result) == f"Error: cannot reach {url}: ConnectionError"


def test_node_without_credentials_says_how_to_pass_them(tmp_path: Path) -> None:
    grid = DemoGrid(tmp_path / "empty-home", 0, 0)
    grid.home.mkdir()

    result = grid.pygrid("demo", "model-centric", "--node", "http://127.0.0.1:1")

    error = one_error_line(result)
    assert "--email" in error and "PYGRID_PASSWORD" in error
