"""The dashboards in headless Chromium against real servers: a Node whose data was made through
the HTTP API and the SDK (an FL process trained for a few cycles, a dataset, job requests from a
data scientist), and a Network with Nodes joined through its join API.

Screenshots land in artifacts/screenshots/ (listed at the end of the run).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import Server, free_port, running

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OWNER = ("owner@example.org", "owner-password-1")
SCIENTIST = ("scientist@example.org", "scientist-password-1")
CYCLES = 3
CSV = (
    b"age,income,city\n34,52000.5,paris\n51,61000.25,lyon\n29,38000.75,paris\n"
    b"45,47000.0,nice\n38,41000.0,lyon\n62,39000.5,paris\n"
)
STATS = {"columns": [{"name": "age", "stats": ["count", "mean"]}]}


def token_for(url: str, email: str, password: str) -> str:
    answer = requests.post(
        f"{url}/users/login", json={"email": email, "password": password}, timeout=30
    )
    answer.raise_for_status()
    return str(answer.json()["token"])


def api(url: str, path: str, token: str) -> Any:
    answer = requests.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Node with an FL process trained for CYCLES cycles, a dataset and a scientist."""
    tmp = tmp_path_factory.mktemp("node")
    port = free_port()
    command = [sys.executable, "-m", "pygrid.cli", "node", "--id", "alice", "--port"]
    command += [str(port), "--data-dir", str(tmp / "data")]
    env = {"PYGRID_OWNER_EMAIL": OWNER[0], "PYGRID_OWNER_PASSWORD": OWNER[1]}
    with running([], port, tmp / "node.log", env=env, command=command) as server:
        _train(server.url)
        _publish(server.url)
        yield server


def _train(url: str) -> None:
    """Host the reference digits MLP and let two simulated devices train CYCLES cycles."""
    from pygrid.client import ModelCentricFLClient
    from pygrid.simulation import Simulation, reference_configs
    from pygrid.workloads import digits

    owner = ModelCentricFLClient(url)
    owner.login(*OWNER)
    data = digits.load()
    shards = [(x[:60], y[:60]) for x, y in digits.split_iid(data.x_train, data.y_train, 2)]
    # more cycles than are run: the process stays running with an open cycle
    client_config, server_config = reference_configs("digits", "1", 2, CYCLES + 2, 60)
    hosted = owner.host_federated_training(digits.mlp(), client_config, server_config)
    simulation = Simulation(url, owner, hosted["process_id"], "digits", "1", shards)
    for _ in range(CYCLES):
        simulation.run_cycle()


def _publish(url: str) -> None:
    """A dataset from the Owner and a data scientist's account."""
    from pygrid.client import DataCentricClient

    owner = DataCentricClient(url)
    owner.login(*OWNER)
    owner.upload_dataset(CSV, name="people", tags=["census", "tabular"], description="a census")
    created = requests.post(
        f"{url}/users",
        json={"email": SCIENTIST[0], "password": SCIENTIST[1], "role": "data_scientist"},
        headers={"Authorization": f"Bearer {token_for(url, *OWNER)}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text


def pending_job(url: str) -> int:
    """A statistics job the data scientist submits through the SDK; it waits for review."""
    from pygrid.client import DataCentricClient

    scientist = DataCentricClient(url)
    scientist.login(*SCIENTIST)
    dataset = next(d for d in scientist.datasets() if d["name"] == "people")
    job = scientist.submit_job(dataset["id"], "statistics", statistics=STATS)
    assert job["state"] == "pending_review"
    return int(job["id"])


def log_in(page: Any, email: str, password: str) -> None:
    """Through the form, as a person would: any dashboard page leads there first."""
    page.goto("/dashboard/")
    assert "/dashboard/login" in page.url
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button:text('Log in')")
    assert page.url.endswith("/dashboard/"), page.url


def no_csp_violations(page: Any) -> None:
    assert page.evaluate("window.__cspViolations") == []


# ---- the Node -----------------------------------------------------------------------------------


def test_the_fl_chart_has_one_point_per_closed_cycle(
    node: Server, new_page: Any, screenshot: Any
) -> None:
    # Prepare: what the API says was trained
    owner = token_for(node.url, *OWNER)
    process = api(node.url, "/model-centric/processes", owner)["processes"][0]
    closed = [c for c in process["cycles"] if c["state"] == "closed" and c["metrics"]]
    assert len(closed) == CYCLES
    page = new_page(node.url)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, *OWNER)
    # Execute
    page.click("nav a:text('FL processes')")
    page.click(f"a:text('{process['name']}')")
    page.wait_for_selector("canvas#metrics-chart[data-rendered]")
    chart = page.evaluate(
        """() => {
            const chart = Chart.getChart(document.getElementById('metrics-chart'));
            return {
                labels: chart.data.labels,
                series: Object.fromEntries(chart.data.datasets.map(d => [d.label, d.data])),
                drawn: chart.data.datasets.map((d, i) => chart.getDatasetMeta(i).data.length),
            };
        }"""
    )
    screenshot(page, "node-fl-process-chart")
    # Assert: the chart's points are the API's closed cycles, in order, with their metrics
    assert chart["labels"] == [c["sequence"] for c in closed]
    assert chart["drawn"] == [CYCLES, CYCLES]
    assert chart["series"]["accuracy"] == pytest.approx([c["metrics"]["accuracy"] for c in closed])
    assert chart["series"]["loss"] == pytest.approx([c["metrics"]["loss"] for c in closed])
    assert page.get_attribute("canvas#metrics-chart", "data-points") == str(CYCLES)
    assert page.locator("#cycles tbody tr[data-state=closed]").count() == CYCLES
    assert page.locator("#cycles tbody tr[data-state=open]").count() == 1
    no_csp_violations(page)
    assert errors == []


def test_the_owner_approves_a_pending_request_and_the_api_agrees(
    node: Server, new_page: Any, screenshot: Any
) -> None:
    # Prepare
    job_id = pending_job(node.url)
    page = new_page(node.url)
    log_in(page, *OWNER)
    page.click("nav a:text('Job requests')")
    row = page.locator(f"#job-{job_id}")
    assert row.locator("td").nth(2).inner_text() == SCIENTIST[0]
    screenshot(page, "node-pending-requests")
    # Execute
    row.locator("form.approve input[name=reason]").fill("aggregate statistics only")
    with page.expect_navigation():
        row.locator("form.approve button").click()
    # Assert: the page and the API both say it is queued
    assert f"Job {job_id} approved" in page.locator(".flash.ok").inner_text()
    assert page.locator(f"#job-{job_id}").count() == 0
    assert page.get_attribute(f"#recent-{job_id}", "data-state") == "queued"
    screenshot(page, "node-request-approved")
    job = api(node.url, f"/data-centric/jobs/{job_id}", token_for(node.url, *OWNER))
    assert (job["state"], job["review_reason"]) == ("queued", "aggregate statistics only")
    no_csp_violations(page)


def test_a_data_scientist_is_refused_review_and_owner_pages(
    node: Server, new_page: Any, screenshot: Any
) -> None:
    # Prepare
    job_id = pending_job(node.url)
    page = new_page(node.url)
    log_in(page, *SCIENTIST)
    # Execute and assert: no review buttons, no links to pages they may not open
    page.click("nav a:text('Job requests')")
    row = page.locator(f"#job-{job_id}")
    assert "waiting for a reviewer" in row.inner_text()
    assert row.locator("form").count() == 0
    links = page.locator("header nav a").all_inner_texts()
    assert "Audit log" not in links and "Workers" not in links
    refused = page.goto("/dashboard/audit")
    assert refused is not None and refused.status == 403
    assert "this needs the read_audit_log permission" in page.inner_text("main")
    screenshot(page, "node-data-scientist-refused")
    # a hand-made approve form with the session's own CSRF token is still refused
    csrf = page.get_attribute("meta[name=csrf-token]", "content")
    target = f"{node.url}/dashboard/jobs/{job_id}/approve"
    forged = page.request.post(target, form={"csrf_token": csrf, "reason": "me"})
    assert forged.status == 403 and "triage_requests" in forged.text()
    assert page.request.post(target, form={"reason": "me"}).status == 400
    job = api(node.url, f"/data-centric/jobs/{job_id}", token_for(node.url, *OWNER))
    assert job["state"] == "pending_review"


def test_a_dataset_shows_its_mock_rows_and_downloads_them(
    node: Server, new_page: Any, screenshot: Any, tmp_path: Path
) -> None:
    owner = token_for(node.url, *OWNER)
    dataset = next(
        d
        for d in api(node.url, "/data-centric/datasets", owner)["datasets"]
        if d["name"] == "people"
    )
    answer = requests.get(
        f"{node.url}{dataset['mock_url']}?format=csv",
        headers={"Authorization": f"Bearer {owner}"},
        timeout=30,
    )
    mock_csv = answer.content
    rows = [line.split(",") for line in mock_csv.decode().splitlines()]
    page = new_page(node.url)
    log_in(page, *OWNER)
    page.click("nav a:text('Datasets')")
    page.click("a:text('people')")
    shown = [tr.locator("td").all_inner_texts() for tr in page.locator("#mock tbody tr").all()]
    screenshot(page, "node-dataset-mock")
    assert page.locator("#mock thead th").all_inner_texts() == rows[0]
    assert len(shown) == min(10, len(rows) - 1)
    # the CSV writes floats in numpy's shortest form; ages and cities read the same either way
    expected = rows[1 : len(shown) + 1]
    assert [(r[0], r[2]) for r in shown] == [(r[0], r[2]) for r in expected]
    with page.expect_download() as download:
        page.click("#mock-csv")
    saved = tmp_path / "mock.csv"
    download.value.save_as(saved)
    assert saved.read_bytes() == mock_csv
    no_csp_violations(page)


# ---- the Network --------------------------------------------------------------------------------


def test_the_network_dashboard_shows_nodes_and_searches(
    node: Server, new_page: Any, screenshot: Any, tmp_path: Path
) -> None:
    from tests.support.network import NETWORK_OWNER, join_token, network_server

    with network_server(tmp_path) as network:
        # Prepare: the Node joins with the catalogue it publishes; a second one stops answering
        catalogue = requests.get(f"{node.url}/catalogue", timeout=30).json()
        for node_id, url, seconds, published in (
            ("alice", node.url, 3600, catalogue),
            ("bob", "http://127.0.0.1:9", 0.2, {"datasets": [], "processes": []}),
        ):
            joined = requests.post(
                f"{network.url}/registry/join",
                json={
                    "join_token": join_token(network.url),
                    "node_id": node_id,
                    "url": url,
                    "heartbeat_seconds": seconds,
                    "catalogue": published,
                },
                timeout=30,
            )
            assert joined.status_code == 201, joined.text
        time.sleep(2.5)  # ten missed 0.2 s heartbeats: bob is offline
        nodes = {n["id"]: n for n in requests.get(f"{network.url}/registry/nodes").json()["nodes"]}
        assert (nodes["alice"]["status"], nodes["bob"]["status"]) == ("online", "offline")
        expected = requests.get(f"{network.url}/search", params={"q": "census"}, timeout=30).json()
        assert expected["results"], expected
        page = new_page(network.url)
        # Execute
        log_in(page, *NETWORK_OWNER.values())
        statuses = {
            node_id: page.get_attribute(f"#node-{node_id}", "data-status") for node_id in nodes
        }
        page.fill("form[data-search] input[name=q]", "census")
        page.click("form[data-search] button")
        page.wait_for_selector("#search-status[data-count]")
        hits = [
            tr.locator("td").all_inner_texts()
            for tr in page.locator("#search-results tbody tr").all()
        ]
        screenshot(page, "network-nodes-and-search")
        # Assert
        assert statuses == {node_id: n["status"] for node_id, n in nodes.items()}
        assert "s ago" in page.locator("#node-alice td").nth(2).inner_text()
        assert page.get_attribute("#search-status", "data-count") == str(len(expected["results"]))
        assert [(h[0], h[2]) for h in hits] == [
            (r["node_id"], r["dataset"]["name"]) for r in expected["results"]
        ]
        assert hits[0][:3] == ["alice", "online", "people"]
        no_csp_violations(page)
