"""``/dashboard/*`` on a Node: FL processes and their metrics, datasets and their mock samples,
job requests to approve or deny, Workers, budgets and the audit log.

Pages call the same ``pygrid.model_centric`` and ``pygrid.data_centric`` functions as the JSON
API, with the same permissions; they only shape what those return into HTML.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Response, current_app, g, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from pygrid.auth.roles import Permission, has_permission
from pygrid.data_centric import audit, budgets, datasets, jobs, worker_tokens
from pygrid.datasets import columns_to_csv, load_columns
from pygrid.db.models import Dataset
from pygrid.errors import InvalidInput, PyGridError
from pygrid.model_centric import processes
from pygrid.server.dashboard import NavItem, dashboard_blueprint, done, page
from pygrid.server.database import db_session
from pygrid.server.endpoint import parse_model

bp = dashboard_blueprint(
    "node_dashboard",
    __name__,
    nav=(
        NavItem(".index", "Overview"),
        NavItem(".process_list", "FL processes", Permission.host_processes),
        NavItem(".dataset_list", "Datasets"),
        NavItem(".job_list", "Job requests"),
        NavItem(".workers", "Workers", Permission.manage_workers),
        NavItem(".budget_list", "Budgets"),
        NavItem(".audit_log", "Audit log", Permission.read_audit_log),
    ),
)

MOCK_ROWS = 10
AUDIT_PAGE = 50
# audit.events reads newest first up to a limit; pages go as deep as GET /data-centric/audit.
AUDIT_MAX_EVENTS = 10_000
RECENT_JOBS = 50


def _can(permission: Permission) -> bool:
    return has_permission(g.user.role, permission)


@page(bp, "/", summary="Node dashboard: overview")
def index() -> str:
    """What this Node holds and what waits for the user."""
    session = db_session()
    process_count = (
        len(processes.visible_processes(session, g.user))
        if _can(Permission.host_processes)
        else None
    )
    visible_jobs = jobs.list_jobs(session, g.user, None)
    by_state: dict[str, int] = {}
    for job in visible_jobs:
        by_state[job.state] = by_state.get(job.state, 0) + 1
    live_workers = None
    if _can(Permission.manage_workers):
        live_workers = sum(
            1 for t in worker_tokens.list_tokens(session) if _token_state(t) == "live"
        )
    return render_template(
        "dashboard/node/index.html",
        process_count=process_count,
        dataset_count=len(datasets.list_datasets(session)),
        job_count=len(visible_jobs),
        pending=by_state.get("pending_review", 0),
        by_state=by_state,
        live_workers=live_workers,
        reviewer=jobs.is_reviewer(g.user),
    )


# ---- model-centric --------------------------------------------------------------------------


def chart_data(status: dict[str, Any]) -> dict[str, Any]:
    """Points of the metrics chart: one per closed cycle that has metrics, in cycle order."""
    closed = [c for c in status["cycles"] if c["state"] == "closed" and c["metrics"]]
    return {
        "cycles": [c["sequence"] for c in closed],
        "series": {
            name: [c["metrics"].get(name) for c in closed]
            for name in ("accuracy", "loss")
            if any(name in c["metrics"] for c in closed)
        },
    }


@page(bp, "/processes", summary="FL processes", permission=Permission.host_processes)
def process_list() -> str:
    """Processes the user may see, with their latest metrics."""
    session = db_session()
    rows = []
    for process in processes.visible_processes(session, g.user):
        status = processes.process_status(session, process)
        closed = [c for c in status["cycles"] if c["state"] == "closed"]
        rows.append({**status, "latest": closed[-1]["metrics"] if closed else None})
    return render_template("dashboard/node/processes.html", processes=rows)


@page(
    bp, "/processes/<int:process_id>", summary="An FL process", permission=Permission.host_processes
)
def process(process_id: int) -> str:
    """Its configuration, a chart of per-cycle accuracy and loss, and its cycles."""
    session = db_session()
    found = processes.get_process(session, process_id)
    processes.check_may_manage(g.user, found)
    status = processes.process_status(session, found)
    return render_template("dashboard/node/process.html", process=status, chart=chart_data(status))


# ---- datasets -------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def mock_table(dataset: Dataset, data: bytes, rows: int = MOCK_ROWS) -> dict[str, Any]:
    """The first ``rows`` rows of a mock sample as text, in the schema's column order."""
    columns = load_columns(data)
    names = [c["name"] for c in dataset.schema["columns"] if c["name"] in columns]
    categories = {c["name"]: c.get("categories") for c in dataset.schema["columns"]}
    total = len(next(iter(columns.values()))) if columns else 0
    body = []
    for index in range(min(rows, total)):
        row = []
        for name in names:
            value = columns[name][index]
            labels = categories.get(name)
            if labels is not None:
                row.append(str(labels[int(value)]))
            elif np.ndim(value) > 0:
                flat = np.ravel(value)
                head = ", ".join(_shown(v.item()) for v in flat[:4])
                more = f", … ({flat.size} values)" if flat.size > 4 else ""
                row.append(f"[{head}{more}]")
            else:
                row.append(_shown(value.item()))
        body.append(row)
    flat_only = all(columns[name].ndim == 1 for name in names)
    return {"columns": names, "rows": body, "total": total, "csv": flat_only}


@page(bp, "/datasets", summary="Datasets")
def dataset_list() -> str:
    """Every dataset's metadata (never its rows)."""
    found = [datasets.dataset_json(d) for d in datasets.list_datasets(db_session())]
    return render_template("dashboard/node/datasets.html", datasets=found)


@page(bp, "/datasets/<int:dataset_id>", summary="A dataset and its mock sample")
def dataset(dataset_id: int) -> str:
    """Metadata, schema and the first rows of the mock sample (viewing it is audited)."""
    found, data = datasets.mock_sample(
        db_session(), current_app.extensions["pygrid.blobs"], g.user, dataset_id
    )
    return render_template(
        "dashboard/node/dataset.html",
        dataset=datasets.dataset_json(found),
        mock=mock_table(found, data),
    )


@page(bp, "/datasets/<int:dataset_id>/mock", summary="Download a dataset's mock sample")
def dataset_mock(dataset_id: int) -> Response:
    """As CSV (``?format=csv``, one value per cell only) or safetensors, like the API's."""
    found, data = datasets.mock_sample(
        db_session(), current_app.extensions["pygrid.blobs"], g.user, dataset_id
    )
    if request.args.get("format") == "csv":
        columns = load_columns(data)  # safetensors sorts names: restore the schema's order
        ordered = {c["name"]: columns[c["name"]] for c in found.schema["columns"]}
        response = Response(columns_to_csv(ordered, found.schema), mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="mock-{found.id}.csv"'
        return response
    response = Response(data, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="mock-{found.id}.safetensors"'
    return response


# ---- job requests ---------------------------------------------------------------------------


@page(bp, "/jobs", summary="Job requests")
def job_list() -> str:
    """Requests waiting for review (with approve/deny for reviewers) and recent jobs."""
    session = db_session()
    pending = [
        jobs.job_json(session, j, g.user) for j in jobs.list_jobs(session, g.user, "pending_review")
    ]
    recent = [
        jobs.job_json(session, j, g.user)
        for j in jobs.list_jobs(session, g.user, None)[:RECENT_JOBS]
    ]
    return render_template(
        "dashboard/node/jobs.html",
        pending=pending,
        recent=recent,
        triage=_can(Permission.triage_requests),
    )


def _reason(model: type[Any]) -> Any:
    text = request.form.get("reason", "").strip()
    return parse_model(model, {"reason": text or None}, "form")


@page(
    bp,
    "/jobs/<int:job_id>/approve",
    methods=("POST",),
    summary="Approve a pending job from the dashboard",
    permission=Permission.triage_requests,
)
def approve(job_id: int) -> BaseResponse:
    """pending_review -> queued, as ``POST /data-centric/jobs/<id>/approve``."""
    from pygrid.apps.node.data_centric import Review

    try:
        job = jobs.approve_job(db_session(), g.user, job_id, _reason(Review).reason)
    except PyGridError as exc:
        return done(exc.message, ".job_list", "error")
    current_app.extensions["pygrid.queue"].notify()
    return done(f"Job {job.id} approved: it is queued for a Worker.", ".job_list")


@page(
    bp,
    "/jobs/<int:job_id>/deny",
    methods=("POST",),
    summary="Deny a pending job from the dashboard, with a reason",
    permission=Permission.triage_requests,
)
def deny(job_id: int) -> BaseResponse:
    """pending_review -> denied, as ``POST /data-centric/jobs/<id>/deny``."""
    from pygrid.apps.node.data_centric import Denial

    try:
        job = jobs.deny_job(db_session(), g.user, job_id, _reason(Denial).reason)
    except InvalidInput:
        return done(f"Job {job_id} was not denied: a denial needs a reason.", ".job_list", "error")
    except PyGridError as exc:
        return done(exc.message, ".job_list", "error")
    return done(f"Job {job.id} denied.", ".job_list")


# ---- Workers, budgets, audit ----------------------------------------------------------------


def _token_state(token: Any) -> str:
    from pygrid.db.models import utcnow

    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= utcnow():
        return "expired"
    return "live"


@page(
    bp,
    "/workers",
    summary="Worker tokens and when each was last seen",
    permission=Permission.manage_workers,
)
def workers() -> str:
    """Every worker token (never its secret), its state and the Worker's last request."""
    session = db_session()
    tokens = [
        {**worker_tokens.token_json(t), "state": _token_state(t)}
        for t in worker_tokens.list_tokens(session)
    ]
    queued = len(jobs.list_jobs(session, g.user, "queued"))
    running = len(jobs.list_jobs(session, g.user, "running"))
    return render_template(
        "dashboard/node/workers.html", tokens=tokens, queued=queued, running=running
    )


@page(bp, "/budgets", summary="Privacy budgets")
def budget_list() -> str:
    """All budgets for budget managers; one's own otherwise."""
    session = db_session()
    names = {d.id: d.name for d in datasets.list_datasets(session)}
    rows = [
        {**budgets.budget_json(b, u), "dataset_name": names.get(b.dataset_id, "?")}
        for b, u in budgets.list_budgets(session, g.user, None, None)
    ]
    return render_template("dashboard/node/budgets.html", budgets=rows)


@page(bp, "/audit", summary="The audit log, newest first", permission=Permission.read_audit_log)
def audit_log() -> str:
    """``AUDIT_PAGE`` events a page, newest first."""
    try:
        number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        number = 1
    number = min(number, AUDIT_MAX_EVENTS // AUDIT_PAGE)
    start = (number - 1) * AUDIT_PAGE
    found = audit.events(db_session(), limit=min(start + AUDIT_PAGE + 1, AUDIT_MAX_EVENTS))
    shown = [audit.event_json(e) for e in found[start : start + AUDIT_PAGE]]
    return render_template(
        "dashboard/node/audit.html",
        events=shown,
        page=number,
        has_next=len(found) > start + AUDIT_PAGE,
    )
