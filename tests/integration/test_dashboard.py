"""The Node and Network dashboards through Flask's test client: log-in, sessions, CSRF, who may
see and do what, and that each page shows what the JSON API says.

tests/browser/test_dashboards.py drives the same pages in Chromium against real servers.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.orm import Session

from pygrid import plans, serde, users
from pygrid.apps.node.dashboard import chart_data
from pygrid.auth.roles import Permission, Role, has_permission
from pygrid.datasets import load_columns
from pygrid.db.models import utcnow
from pygrid.model_centric.closing import close_due_cycles
from pygrid.server.dashboard import CONTENT_SECURITY_POLICY
from tests.support.data_centric import npz_bytes, submit, upload, worker_token
from tests.support.users import PASSWORD, bearer, login

OWNER = "owner@example.org"
STATS = {"columns": [{"name": "age", "stats": ["count", "mean"]}]}
CSV = b"age,income,city\n34,52000.5,paris\n51,61000.25,lyon\n29,38000.75,paris\n45,47000.0,nice\n"


@pytest.fixture
def app_kind() -> str:
    """Most dashboard pages are the Node's; the Network tests ask for their own app."""
    return "node"


@pytest.fixture
def person(app: Any) -> Callable[[Role], str]:
    """Make a user with ``role``; their email."""

    def make(role: Role) -> str:
        email = f"{role}@example.org"
        with Session(app.extensions["pygrid.db"].engine) as session:
            users.create_user(session, email, PASSWORD, role)
        return email

    return make


def csrf_of(client: Any) -> str:
    """The CSRF token of the client's dashboard session."""
    with client.session_transaction() as session:
        token: str = session["csrf"]
    return token


def log_in(client: Any, email: str, password: str = PASSWORD, next_: str | None = None) -> Any:
    """Fill in the log-in form as a browser would; the answer to the POST."""
    page = client.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert token, page.get_data(as_text=True)
    form = {"csrf_token": token.group(1), "email": email, "password": password}
    if next_ is not None:
        form["next"] = next_
    return client.post("/dashboard/login", data=form)


def pending_job(client: Any, owner_token: str, scientist_token: str) -> dict[str, Any]:
    """A dataset and a statistics job waiting for review, made through the JSON API."""
    dataset = upload(client, owner_token, CSV, "people.csv").get_json()
    job = submit(
        client,
        scientist_token,
        {"dataset_id": dataset["id"], "kind": "statistics", "statistics": STATS},
    )
    assert job.status_code == 201, job.get_json()
    body: dict[str, Any] = job.get_json()
    return body


def api_job(client: Any, token: str, job_id: int) -> dict[str, Any]:
    body: dict[str, Any] = client.get(
        f"/data-centric/jobs/{job_id}", headers=bearer(token)
    ).get_json()
    return body


# ---- log-in, sessions, CSRF ---------------------------------------------------------------------


def test_a_page_sends_strangers_to_the_login_form_and_back_after_it(client: Any) -> None:
    response = client.get("/dashboard/jobs?state=all")
    assert response.status_code == 303
    assert response.location == "/dashboard/login?next=/dashboard/jobs?state%3Dall"
    logged_in = log_in(client, OWNER, next_="/dashboard/jobs?state=all")
    assert logged_in.status_code == 303 and logged_in.location == "/dashboard/jobs?state=all"
    assert client.get("/dashboard/jobs").status_code == 200


def test_a_wrong_password_opens_no_session(client: Any) -> None:
    response = log_in(client, OWNER, password="not-the-password")
    assert response.status_code == 401
    assert "wrong email or password" in response.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 303


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/dashboard/",
        "/users",
        "/\\evil.example",
        "/dashboard/logout",
    ],
)
def test_after_login_the_browser_never_leaves_the_dashboard(client: Any, target: str) -> None:
    response = log_in(client, OWNER, next_=target)
    assert response.status_code == 303 and response.location == "/dashboard/"


def test_the_session_cookie_is_signed_httponly_samesite_and_named_after_the_server(
    app: Any, client: Any
) -> None:
    cookie = log_in(client, OWNER).headers["Set-Cookie"]
    name, _, rest = cookie.partition("=")
    assert name == "pygrid_node_test_session"
    assert "HttpOnly" in rest and "SameSite=Lax" in rest
    # signed with the app's SECRET_KEY: another key reads nothing from it
    value = rest.split(";")[0]
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None and serializer.loads(value)["uid"] == 1
    app.secret_key = "another-secret-key-another-secret-key"
    assert client.get("/dashboard/").status_code == 303


def test_login_and_logout_need_the_forms_csrf_token(client: Any) -> None:
    client.get("/dashboard/login")
    form = {"email": OWNER, "password": PASSWORD}
    assert client.post("/dashboard/login", data=form).status_code == 400
    assert client.post("/dashboard/login", data={**form, "csrf_token": "forged"}).status_code == 400
    assert log_in(client, OWNER).status_code == 303
    assert client.post("/dashboard/logout", data={}).status_code == 400
    assert client.get("/dashboard/").status_code == 200
    out = client.post("/dashboard/logout", data={"csrf_token": csrf_of(client)})
    assert out.status_code == 303 and out.location == "/dashboard/login"
    assert client.get("/dashboard/").status_code == 303


def test_a_new_password_ends_the_dashboard_session(client: Any, owner_token: str) -> None:
    log_in(client, OWNER)
    assert client.get("/dashboard/").status_code == 200
    changed = client.patch(
        "/users/me",
        json={"password": "a-brand-new-password", "current_password": PASSWORD},
        headers=bearer(owner_token),
    )
    assert changed.status_code == 200, changed.get_json()
    assert client.get("/dashboard/").status_code == 303


# ---- review from the dashboard ------------------------------------------------------------------


def test_a_data_scientist_cannot_approve_and_the_job_stays_pending(
    client: Any, owner_token: str, person: Callable[[Role], str]
) -> None:
    email = person(Role.data_scientist)
    job = pending_job(client, owner_token, login(client, email))
    log_in(client, email)
    page = client.get("/dashboard/jobs").get_data(as_text=True)
    assert f'id="job-{job["id"]}"' in page and "/approve" not in page
    refused = client.post(
        f"/dashboard/jobs/{job['id']}/approve", data={"csrf_token": csrf_of(client)}
    )
    assert refused.status_code == 403
    assert "this needs the triage_requests permission" in refused.get_data(as_text=True)
    assert api_job(client, owner_token, job["id"])["state"] == "pending_review"


def test_a_compliance_officer_approves_and_denies_as_the_api_would(
    client: Any, owner_token: str, person: Callable[[Role], str]
) -> None:
    scientist = login(client, person(Role.data_scientist))
    first = pending_job(client, owner_token, scientist)
    second = submit(client, scientist, first["spec"]).get_json()
    officer = person(Role.compliance_officer)
    log_in(client, officer)
    csrf = csrf_of(client)

    approved = client.post(
        f"/dashboard/jobs/{first['id']}/approve", data={"csrf_token": csrf, "reason": "fine"}
    )
    assert approved.status_code == 303 and approved.location == "/dashboard/jobs"
    no_reason = client.post(
        f"/dashboard/jobs/{second['id']}/deny", data={"csrf_token": csrf, "reason": "  "}
    )
    assert no_reason.status_code == 303
    page = client.get("/dashboard/jobs").get_data(as_text=True)
    assert f"Job {first['id']} approved" in page and "a denial needs a reason" in page
    assert api_job(client, owner_token, second["id"])["state"] == "pending_review"
    denied = client.post(
        f"/dashboard/jobs/{second['id']}/deny", data={"csrf_token": csrf, "reason": "too broad"}
    )
    assert denied.status_code == 303

    one, two = api_job(client, owner_token, first["id"]), api_job(client, owner_token, second["id"])
    assert (one["state"], one["review_reason"]) == ("queued", "fine")
    assert (two["state"], two["review_reason"]) == ("denied", "too broad")
    events = client.get("/data-centric/audit", headers=bearer(owner_token)).get_json()["events"]
    actors = {e["action"]: e["actor"] for e in events}
    assert actors["job.approve"] == actors["job.deny"] == f"user:{officer}"
    # reviewing twice is the API's 409, shown as a message
    again = client.post(
        f"/dashboard/jobs/{first['id']}/deny", data={"csrf_token": csrf, "reason": "x"}
    )
    assert again.status_code == 303
    assert f"job {first['id']} is queued, not pending_review" in client.get(
        "/dashboard/jobs"
    ).get_data(as_text=True)


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
def test_a_review_without_the_sessions_csrf_token_is_refused(
    client: Any, owner_token: str, person: Callable[[Role], str], csrf: str | None
) -> None:
    job = pending_job(client, owner_token, login(client, person(Role.data_scientist)))
    log_in(client, OWNER)
    form = {} if csrf is None else {"csrf_token": csrf}
    response = client.post(f"/dashboard/jobs/{job['id']}/approve", data=form)
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert api_job(client, owner_token, job["id"])["state"] == "pending_review"


# ---- pages --------------------------------------------------------------------------------------

PAGES = {
    "/dashboard/": None,
    "/dashboard/processes": "host_processes",
    "/dashboard/datasets": None,
    "/dashboard/jobs": None,
    "/dashboard/workers": "manage_workers",
    "/dashboard/budgets": None,
    "/dashboard/audit": "read_audit_log",
}


@pytest.mark.parametrize("role", list(Role))
def test_each_page_opens_exactly_for_the_roles_the_api_lets_in(
    client: Any, person: Callable[[Role], str], role: Role
) -> None:
    log_in(client, OWNER if role is Role.owner else person(role))
    for path, permission in PAGES.items():
        response = client.get(path)
        allowed = permission is None or has_permission(role, Permission(permission))
        assert response.status_code == (200 if allowed else 403), (path, role)
        # the header shows only the links the user may follow
        assert (f'href="{path}"' in response.get_data(as_text=True)) is allowed, (path, role)


def test_pages_carry_a_content_security_policy_and_no_inline_script(
    client: Any, owner_token: str
) -> None:
    upload(client, owner_token, CSV, "people.csv")
    responses = {"/dashboard/login": client.get("/dashboard/login")}
    log_in(client, OWNER)
    responses |= {path: client.get(path) for path in [*PAGES, "/dashboard/datasets/1"]}
    for path, response in responses.items():
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Frame-Options"] == "DENY"
        html = response.get_data(as_text=True)
        for tag in re.findall(r"<script[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+=", html), path
        assert "https://" not in html and "http://" not in html, path


def test_the_chart_library_and_its_license_are_served_from_the_package(client: Any) -> None:
    with client.get("/dashboard/static/vendor/chart.umd.min.js") as script:
        assert script.status_code == 200 and script.data.startswith(b"/*!\n * Chart.js v4.")
    with client.get("/dashboard/static/vendor/chart.js.LICENSE.md") as license_:
        assert b"MIT License" in license_.data


def test_the_dataset_page_shows_the_first_mock_rows_and_downloads_them(
    client: Any, owner_token: str
) -> None:
    rng = np.random.default_rng(3)
    dataset = upload(
        client,
        owner_token,
        npz_bytes(x=rng.normal(size=(40, 3)).astype(np.float32), y=np.arange(40) % 2),
        "d.npz",
        name="vectors",
    ).get_json()
    log_in(client, OWNER)
    html = client.get(f"/dashboard/datasets/{dataset['id']}").get_data(as_text=True)
    api_mock = client.get(dataset["mock_url"], headers=bearer(owner_token)).data
    columns = load_columns(api_mock)
    table = html.split('id="mock"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    assert len(rows) == 10  # the first ten of the mock's rows
    first = re.findall(r"<td>(.*?)</td>", rows[0])
    assert first[0].startswith(f"[{columns['x'][0][0].item():.6g}, ")
    assert first[1] == str(columns["y"][0].item())
    # x has three values a row: CSV cannot hold it, so the download is the safetensors file
    assert 'id="mock-csv"' not in html
    download = client.get(f"/dashboard/datasets/{dataset['id']}/mock")
    assert download.data == api_mock
    assert "attachment" in download.headers["Content-Disposition"]


def test_a_flat_mock_downloads_as_the_apis_csv(client: Any, owner_token: str) -> None:
    dataset = upload(client, owner_token, CSV, "people.csv").get_json()
    log_in(client, OWNER)
    html = client.get(f"/dashboard/datasets/{dataset['id']}").get_data(as_text=True)
    assert 'id="mock-csv"' in html
    ours = client.get(f"/dashboard/datasets/{dataset['id']}/mock?format=csv")
    theirs = client.get(f"{dataset['mock_url']}?format=csv", headers=bearer(owner_token))
    assert ours.status_code == 200 and ours.mimetype == "text/csv"
    assert ours.data == theirs.data


def test_the_audit_log_pages_fifty_events_at_a_time(client: Any, owner_token: str) -> None:
    for _ in range(60):
        client.get("/data-centric/search?q=x", headers=bearer(owner_token))
    log_in(client, OWNER)
    first = client.get("/dashboard/audit").get_data(as_text=True)
    second = client.get("/dashboard/audit?page=2").get_data(as_text=True)
    ids = [int(i) for i in re.findall(r'<td class="num">(\d+)</td>\s*<td>\d{4}-', first)]
    later = [int(i) for i in re.findall(r'<td class="num">(\d+)</td>\s*<td>\d{4}-', second)]
    assert ids == list(range(60, 10, -1)) and later == list(range(10, 0, -1))
    assert 'rel="next" href="/dashboard/audit?page=2"' in first
    assert 'rel="next"' not in second and 'rel="prev" href="/dashboard/audit?page=1"' in second
    assert client.get("/dashboard/audit?page=nonsense").status_code == 200


def test_the_workers_page_shows_when_each_worker_was_last_seen(
    client: Any, owner_token: str
) -> None:
    seen = worker_token(client, owner_token, "seen")
    worker_token(client, owner_token, "idle")
    claimed = client.post(
        "/data-centric/worker/claim",
        json={"wait": 0, "worker": "host-1/pid-7"},
        headers=bearer(seen),
    )
    assert claimed.status_code in (200, 204), claimed.get_json()
    log_in(client, OWNER)
    html = client.get("/dashboard/workers").get_data(as_text=True)
    rows = {
        name: row
        for row in re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>", 1)[1], re.S)
        for name in re.findall(r"<td>(seen|idle)</td>", row)
    }
    assert re.search(r">\d+ s ago<", rows["seen"]) and "host-1/pid-7" in rows["seen"]
    assert "never" in rows["idle"]


# ---- FL processes -------------------------------------------------------------------------------


def _host_and_train(app: Any, client: Any, token: str, cycles: int) -> int:
    """Host a tiny process and close ``cycles`` cycles, one device report each."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = {"name": "tiny", "version": "1", "batch_size": 2, "lr": 0.1, "max_updates": 1}
    hosted = client.post(
        "/model-centric/host-training",
        data={
            "name": "tiny",
            "version": "1",
            "client_config": json.dumps(config),
            "server_config": json.dumps(
                {"max_workers": 1, "max_diffs": 1, "num_cycles": cycles + 1}
            ),
            "model": (io.BytesIO(serde.dump(params)), "model.safetensors"),
            "plan:training_plan": (io.BytesIO(plans.save_plan(plans.training_plan(model))), "p.pt"),
        },
        headers=bearer(token),
        content_type="multipart/form-data",
    )
    assert hosted.status_code == 201, hosted.get_json()
    diff = {n: torch.full_like(p, 0.01) for n, p in params.items()}
    for k in range(cycles):
        worker = client.post("/model-centric/authenticate", json={"model_name": "tiny"}).get_json()
        accepted = client.post(
            "/model-centric/cycle-request", json={"worker_id": worker["worker_id"], "model": "tiny"}
        ).get_json()
        reported = client.post(
            "/model-centric/report",
            data={
                "worker_id": worker["worker_id"],
                "request_key": accepted["request_key"],
                "num_samples": "10",
                "metrics": json.dumps({"loss": 1.0 / (k + 1), "accuracy": 0.5 + k / 10}),
                "diff": (io.BytesIO(serde.dump(diff)), "diff.safetensors"),
            },
            content_type="multipart/form-data",
        )
        assert reported.status_code == 200, reported.get_json()
        sessions, blobs = app.extensions["pygrid.db"].sessions, app.extensions["pygrid.blobs"]
        close_due_cycles(sessions, blobs, now=utcnow() + timedelta(seconds=1))
    process_id: int = hosted.get_json()["process_id"]
    return process_id


def test_the_process_page_charts_one_point_per_closed_cycle_with_metrics(
    app: Any, client: Any, owner_token: str
) -> None:
    process_id = _host_and_train(app, client, owner_token, cycles=3)
    status = client.get(
        f"/model-centric/processes/{process_id}", headers=bearer(owner_token)
    ).get_json()
    closed = [c for c in status["cycles"] if c["state"] == "closed"]
    assert len(closed) == 3
    log_in(client, OWNER)
    html = client.get(f"/dashboard/processes/{process_id}").get_data(as_text=True)
    data = json.loads(
        re.search(
            r'<script type="application/json" id="metrics-data">(.*?)</script>', html, re.S
        ).group(1)
    )
    assert data["cycles"] == [c["sequence"] for c in closed]
    assert data["series"]["accuracy"] == pytest.approx([c["metrics"]["accuracy"] for c in closed])
    assert data["series"]["loss"] == pytest.approx([c["metrics"]["loss"] for c in closed])
    assert 'data-points="3"' in html
    assert html.count('data-state="closed"') == 3 and html.count('data-state="open"') == 1
    listing = client.get("/dashboard/processes").get_data(as_text=True)
    assert f'href="/dashboard/processes/{process_id}"' in listing and "0.7000" in listing


def test_a_process_is_shown_only_to_its_host_and_the_admins(
    app: Any, client: Any, owner_token: str, person: Callable[[Role], str]
) -> None:
    process_id = _host_and_train(app, client, owner_token, cycles=0)
    log_in(client, person(Role.data_scientist))
    response = client.get(f"/dashboard/processes/{process_id}")
    assert response.status_code == 403 and "hosted this process" in response.get_data(as_text=True)
    assert client.get("/dashboard/processes/999").status_code == 404


def test_chart_points_skip_open_cycles_and_cycles_without_metrics() -> None:
    cycles = [
        {"sequence": 1, "state": "closed", "metrics": {"loss": 2.0, "accuracy": 0.1}},
        {"sequence": 2, "state": "closed", "metrics": None},
        {"sequence": 3, "state": "closed", "metrics": {"loss": 1.0}},
        {"sequence": 4, "state": "open", "metrics": None},
    ]
    assert chart_data({"cycles": cycles}) == {
        "cycles": [1, 3],
        "series": {"accuracy": [0.1, None], "loss": [2.0, 1.0]},
    }


# ---- the Network --------------------------------------------------------------------------------


@pytest.mark.parametrize("app_kind", ["network"])
def test_the_network_dashboard_lists_nodes_with_their_status(
    client: Any, owner_token: str, app_kind: str
) -> None:
    made = client.post("/registry/join-tokens", json={"uses": 2}, headers=bearer(owner_token))
    assert made.status_code == 201, made.get_json()
    for node_id, seconds in (("alice", 3600), ("bob", 0.2)):
        joined = client.post(
            "/registry/join",
            json={
                "join_token": made.get_json()["token"],
                "node_id": node_id,
                "url": f"http://127.0.0.1:1/{node_id}",
                "heartbeat_seconds": seconds,
                "catalogue": {"datasets": [{"id": 1, "name": "digits", "tags": ["digits"]}]},
            },
        )
        assert joined.status_code == 201, joined.get_json()
    time.sleep(2.2)  # bob's 0.2 s interval: 10 missed heartbeats make it offline
    api = {n["id"]: n for n in client.get("/registry/nodes").get_json()["nodes"]}
    log_in(client, OWNER)
    html = client.get("/dashboard/").get_data(as_text=True)
    for node_id in ("alice", "bob"):
        row = html.split(f'id="node-{node_id}"', 1)[1].split("</tr>", 1)[0]
        assert f'data-status="{api[node_id]["status"]}"' in row
        assert "http://127.0.0.1:1/" + node_id in row and " s ago" in row
    assert (api["alice"]["status"], api["bob"]["status"]) == ("online", "offline")
    assert 'data-search method="get" action="/search"' in html
