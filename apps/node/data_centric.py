"""``/data-centric/*`` for people: datasets, search, jobs, review, release, budgets, audit,
worker tokens. Views parse and shape; every decision is in ``pygrid.data_centric``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, Field, ValidationError

from pygrid.auth.roles import Permission
from pygrid.data_centric import audit, budgets, datasets, jobs, worker_tokens
from pygrid.data_centric.specs import JobSpec, Strict
from pygrid.errors import InvalidInput
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint, validation_detail
from pygrid.server.transfer import file_field

bp = Blueprint("data_centric", __name__, url_prefix="/data-centric")

Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]
Epsilon = Annotated[float, Field(gt=0, le=1000)]


# ---- request models -------------------------------------------------------------------------


class UploadForm(Strict):
    """Text fields of ``POST datasets``; files: ``data`` (required) and ``mock``."""

    name: Name
    description: Description = ""
    tags: Annotated[str, Field(max_length=2000)] = ""
    target: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    schema_: Annotated[str | None, Field(alias="schema", max_length=1_000_000)] = None
    format: Annotated[str, Field(pattern="^(csv|npz|safetensors)$")] | None = None


class DatasetChanges(Strict):
    """``PATCH datasets/<id>``: what to change (omitted fields stay)."""

    name: Name | None = None
    description: Description | None = None
    tags: Annotated[list[str], Field(max_length=20)] | None = None
    auto_release_epsilon: Epsilon | None = None


class SearchQuery(Strict):
    """``GET search``: every tag must match; ``q`` matches name, description or tags."""

    tags: Annotated[str, Field(max_length=2000)] = ""
    q: Annotated[str, Field(max_length=200)] | None = None


class MockQuery(Strict):
    """``GET datasets/<id>/mock``."""

    format: Annotated[str, Field(pattern="^(safetensors|csv)$")] = "safetensors"


class JobForm(Strict):
    """Text field of ``POST jobs``: ``spec`` (JSON); files: ``model``, or ``plan`` + ``params``."""

    spec: Annotated[str, Field(max_length=1_000_000)]


class JobsQuery(Strict):
    """``GET jobs``."""

    state: Annotated[str, Field(pattern="^(all|" + "|".join(jobs.STATES) + ")$")] | None = None


class Review(Strict):
    """``POST jobs/<id>/approve``."""

    reason: Annotated[str, Field(max_length=2000)] | None = None


class Denial(Strict):
    """``POST jobs/<id>/deny``: the reason is required."""

    reason: Annotated[str, Field(min_length=1, max_length=2000)]


class BudgetRequest(Strict):
    """``PUT budgets``."""

    dataset_id: int
    user_email: Annotated[str, Field(min_length=3, max_length=254)]
    epsilon: Annotated[float, Field(ge=0, le=1000)]


class BudgetsQuery(Strict):
    """``GET budgets``."""

    dataset_id: int | None = None
    user_email: Annotated[str, Field(max_length=254)] | None = None


class AuditQuery(Strict):
    """``GET audit``."""

    dataset_id: int | None = None
    job_id: int | None = None
    action: Annotated[str, Field(max_length=32)] | None = None
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class TokenRequest(Strict):
    """``POST worker-tokens``."""

    name: Annotated[str, Field(min_length=1, max_length=100)] = "worker"
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None


# ---- response models ------------------------------------------------------------------------


class DatasetOut(BaseModel):
    """A dataset's metadata (never its rows)."""

    id: int
    name: str
    description: str
    tags: list[str]
    schema_: dict[str, Any] = Field(alias="schema")
    mock_generated: bool
    mock_url: str
    size_bytes: int
    auto_release_epsilon: float | None
    owner_id: int | None
    created_at: datetime
    updated_at: datetime


class DatasetList(BaseModel):
    """Datasets."""

    datasets: list[DatasetOut]


class BudgetSummary(BaseModel):
    """The requester's budget on the job's dataset."""

    limit: float
    spent: float
    remaining: float


class JobOut(BaseModel):
    """A job; ``metrics``, ``error`` and the result only once released (or to reviewers)."""

    id: int
    dataset_id: int | None
    dataset_name: str
    requester_id: int | None
    requester_email: str | None
    kind: str
    state: str
    spec: dict[str, Any]
    files: list[str]
    ops: list[str]
    epsilon: float | None
    delta: float | None
    budget: BudgetSummary | None
    review_reason: str | None
    reviewed_by: int | None
    created_at: datetime
    reviewed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    released_at: datetime | None
    attempts: int
    withheld_reason: str | None
    metrics: dict[str, float] | None
    error: str | None
    result_available: bool


class JobList(BaseModel):
    """Jobs."""

    jobs: list[JobOut]


class BudgetOut(BaseModel):
    """One data scientist's budget on one dataset."""

    dataset_id: int
    user_id: int
    user_email: str
    epsilon_limit: float
    epsilon_spent: float
    epsilon_remaining: float


class BudgetList(BaseModel):
    """Budgets."""

    budgets: list[BudgetOut]


class EventOut(BaseModel):
    """One audit event."""

    id: int
    at: datetime
    action: str
    actor: str
    dataset_id: int | None
    job_id: int | None
    detail: dict[str, Any]


class EventList(BaseModel):
    """Audit events, newest first."""

    events: list[EventOut]


class TokenOut(BaseModel):
    """A worker token (never its secret)."""

    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_seen: datetime | None
    last_label: str | None


class NewToken(BaseModel):
    """A new worker token: ``token`` is shown this once."""

    id: int
    name: str
    token: str
    expires_at: datetime | None


class TokenList(BaseModel):
    """Worker tokens."""

    tokens: list[TokenOut]


def _store() -> Any:
    return current_app.extensions["pygrid.blobs"]


def _dataset_out(dataset: Any) -> DatasetOut:
    return DatasetOut.model_validate(datasets.dataset_json(dataset))


def _job_out(job: Any) -> JobOut:
    return JobOut.model_validate(jobs.job_json(db_session(), job, g.user))


def _safetensors(data: bytes, filename: str) -> Response:
    response = Response(data, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# ---- datasets -------------------------------------------------------------------------------


@endpoint(
    bp,
    "/datasets",
    methods=("POST",),
    summary="Upload a dataset (CSV, NPZ or safetensors) with its metadata and mock sample",
    permission=Permission.upload_datasets,
    form=UploadForm,
    files=("data", "mock"),
    response=DatasetOut,
    status=201,
)
def upload(form: UploadForm) -> DatasetOut:
    """Store the private columns, the schema and a mock sample."""
    declared = None
    if form.schema_:
        try:
            declared = json.loads(form.schema_)
        except ValueError:
            raise InvalidInput("schema is not valid JSON", {"field": "schema"}) from None
    data_file = request.files.get("data")
    mock_file = request.files.get("mock")
    dataset = datasets.upload_dataset(
        db_session(),
        _store(),
        g.user,
        data=file_field("data"),
        filename=data_file.filename if data_file else None,
        fmt=form.format,
        name=form.name.strip(),
        description=form.description,
        tags=datasets.parse_tags(form.tags),
        target=form.target,
        declared=declared,
        mock=mock_file.read() if mock_file else None,
        mock_filename=mock_file.filename if mock_file else None,
    )
    return _dataset_out(dataset)


@endpoint(bp, "/datasets", summary="List datasets (metadata only)", response=DatasetList)
def list_datasets() -> DatasetList:
    """Every dataset on this Node."""
    return DatasetList(datasets=[_dataset_out(d) for d in datasets.list_datasets(db_session())])


@endpoint(bp, "/datasets/<int:dataset_id>", summary="A dataset's metadata", response=DatasetOut)
def show_dataset(dataset_id: int) -> DatasetOut:
    """One dataset."""
    return _dataset_out(datasets.get_dataset(db_session(), dataset_id))


@endpoint(
    bp,
    "/datasets/<int:dataset_id>",
    methods=("PATCH",),
    summary="Change a dataset's name, description, tags or auto-release rule",
    permission=Permission.upload_datasets,
    body=DatasetChanges,
    response=DatasetOut,
)
def update_dataset(dataset_id: int, body: DatasetChanges) -> DatasetOut:
    """Apply the fields given (``auto_release_epsilon: null`` turns the rule off)."""
    changes = body.model_dump(exclude_unset=True)
    if "tags" in changes:
        changes["tags"] = datasets.parse_tags(changes["tags"] or [])
    for field in ("name", "description"):
        if field in changes and changes[field] is None:
            raise InvalidInput(f"{field} cannot be null", {"field": field})
    dataset = datasets.update_dataset(db_session(), g.user, dataset_id, changes)
    return _dataset_out(dataset)


@endpoint(
    bp,
    "/datasets/<int:dataset_id>",
    methods=("DELETE",),
    summary="Delete a dataset and its private data",
    permission=Permission.upload_datasets,
    status=204,
)
def delete_dataset(dataset_id: int) -> Response:
    """Refused while one of its jobs is queued or running."""
    datasets.delete_dataset(db_session(), _store(), g.user, dataset_id)
    return Response(status=204)


@endpoint(
    bp,
    "/datasets/<int:dataset_id>/mock",
    summary="Download a dataset's mock sample (never real rows)",
    query=MockQuery,
    content="application/octet-stream",
)
def mock(dataset_id: int, query: MockQuery) -> Response:
    """The mock sample as safetensors, or CSV with ``?format=csv``."""
    from pygrid import datasets as formats

    dataset, data = datasets.mock_sample(db_session(), _store(), g.user, dataset_id)
    if query.format == "csv":
        columns = formats.load_columns(data)  # safetensors sorts names: restore the schema's order
        ordered = {c["name"]: columns[c["name"]] for c in dataset.schema["columns"]}
        text = formats.columns_to_csv(ordered, dataset.schema)
        response = Response(text, mimetype="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="mock-{dataset.id}.csv"'
        return response
    return _safetensors(data, f"mock-{dataset.id}.safetensors")


@endpoint(
    bp,
    "/search",
    summary="Search datasets by tags and text",
    query=SearchQuery,
    response=DatasetList,
)
def search(query: SearchQuery) -> DatasetList:
    """Datasets carrying every tag whose text matches ``q``."""
    found = datasets.search(db_session(), g.user, datasets.parse_tags(query.tags), query.q)
    return DatasetList(datasets=[_dataset_out(d) for d in found])


# ---- jobs -----------------------------------------------------------------------------------


@endpoint(
    bp,
    "/jobs",
    methods=("POST",),
    summary="Submit a job (train, evaluate or statistics) for review",
    permission=Permission.submit_jobs,
    form=JobForm,
    files=jobs.FILE_NAMES,
    response=JobOut,
    status=201,
)
def submit(form: JobForm) -> JobOut:
    """Check the code and the request; the job waits for review."""
    try:
        spec = JobSpec.model_validate_json(form.spec)
    except ValidationError as exc:
        detail = validation_detail(exc)
        where = ", ".join(d["loc"] or "spec" for d in detail)
        raise InvalidInput(f"invalid spec: {where}", detail) from None
    files = {name: upload.read() for name, upload in request.files.items()}
    limits = jobs.Limits(max_file_bytes=current_app.config["MAX_CONTENT_LENGTH"])
    job = jobs.submit_job(db_session(), _store(), g.user, spec, files, limits)
    return _job_out(job)


@endpoint(
    bp, "/jobs", summary="Jobs: your own, or all for reviewers", query=JobsQuery, response=JobList
)
def list_jobs(query: JobsQuery) -> JobList:
    """Newest first."""
    return JobList(jobs=[_job_out(j) for j in jobs.list_jobs(db_session(), g.user, query.state)])


@endpoint(bp, "/jobs/<int:job_id>", summary="A job", response=JobOut)
def show_job(job_id: int) -> JobOut:
    """Its state, cost and (once released) metrics."""
    return _job_out(jobs.visible_job(db_session(), g.user, job_id))


@endpoint(
    bp,
    "/jobs/<int:job_id>/cancel",
    methods=("POST",),
    summary="Withdraw your job before it runs",
    permission=Permission.submit_jobs,
    response=JobOut,
)
def cancel(job_id: int) -> JobOut:
    """From pending_review or queued."""
    return _job_out(jobs.cancel_job(db_session(), g.user, job_id))


@endpoint(
    bp,
    "/jobs/<int:job_id>/approve",
    methods=("POST",),
    summary="Approve a pending job: it is queued for a Worker",
    permission=Permission.triage_requests,
    body=Review,
    response=JobOut,
)
def approve(job_id: int, body: Review) -> JobOut:
    """pending_review -> queued."""
    job = jobs.approve_job(db_session(), g.user, job_id, body.reason)
    current_app.extensions["pygrid.queue"].notify()
    return _job_out(job)


@endpoint(
    bp,
    "/jobs/<int:job_id>/deny",
    methods=("POST",),
    summary="Deny a pending job, with a reason",
    permission=Permission.triage_requests,
    body=Denial,
    response=JobOut,
)
def deny(job_id: int, body: Denial) -> JobOut:
    """pending_review -> denied."""
    return _job_out(jobs.deny_job(db_session(), g.user, job_id, body.reason))


@endpoint(
    bp,
    "/jobs/<int:job_id>/release",
    methods=("POST",),
    summary="Sign off a finished result: charge the budget and release it",
    permission=Permission.manage_budgets,
    response=JobOut,
)
def release(job_id: int) -> JobOut:
    """409 with the numbers, and nothing charged, when the budget does not allow it."""
    return _job_out(jobs.release_job(db_session(), g.user, job_id))


@endpoint(
    bp,
    "/jobs/<int:job_id>/result",
    summary="Download a released result (safetensors)",
    content="application/octet-stream",
)
def result(job_id: int) -> Response:
    """Tensors or model parameters by name; never a pickle."""
    job, data = jobs.result_for(db_session(), _store(), g.user, job_id)
    return _safetensors(data, f"job-{job.id}-result.safetensors")


# ---- budgets, audit, worker tokens ----------------------------------------------------------


@endpoint(
    bp,
    "/budgets",
    methods=("PUT",),
    summary="Set a data scientist's epsilon budget on a dataset",
    permission=Permission.manage_budgets,
    body=BudgetRequest,
    response=BudgetOut,
)
def set_budget(body: BudgetRequest) -> BudgetOut:
    """Create or change the limit; the amount spent stays."""
    session = db_session()
    budget = budgets.set_budget(session, g.user, body.dataset_id, body.user_email, body.epsilon)
    user = budgets.find_user(session, body.user_email)
    return BudgetOut.model_validate(budgets.budget_json(budget, user))


@endpoint(
    bp,
    "/budgets",
    summary="Budgets: your own, or all for budget managers",
    query=BudgetsQuery,
    response=BudgetList,
)
def list_budgets(query: BudgetsQuery) -> BudgetList:
    """With what is spent and what remains."""
    rows = budgets.list_budgets(db_session(), g.user, query.dataset_id, query.user_email)
    return BudgetList(
        budgets=[BudgetOut.model_validate(budgets.budget_json(b, u)) for b, u in rows]
    )


@endpoint(
    bp,
    "/audit",
    summary="The audit log, newest first",
    permission=Permission.read_audit_log,
    query=AuditQuery,
    response=EventList,
)
def audit_log(query: AuditQuery) -> EventList:
    """Every step: upload, search, submit, review, claim, finish, release, download."""
    events = audit.events(
        db_session(),
        dataset_id=query.dataset_id,
        job_id=query.job_id,
        action=query.action,
        limit=query.limit,
    )
    return EventList(events=[EventOut.model_validate(audit.event_json(e)) for e in events])


@endpoint(
    bp,
    "/worker-tokens",
    methods=("POST",),
    summary="Create a worker token (shown once)",
    permission=Permission.manage_workers,
    body=TokenRequest,
    response=NewToken,
    status=201,
)
def create_worker_token(body: TokenRequest) -> NewToken:
    """For ``pygrid worker --token``."""
    token, text = worker_tokens.create_token(db_session(), g.user, body.name, body.expires_in_days)
    return NewToken(id=token.id, name=token.name, token=text, expires_at=token.expires_at)


@endpoint(
    bp,
    "/worker-tokens",
    summary="Worker tokens and when each was last seen",
    permission=Permission.manage_workers,
    response=TokenList,
)
def list_worker_tokens() -> TokenList:
    """Never the secrets."""
    tokens = worker_tokens.list_tokens(db_session())
    return TokenList(tokens=[TokenOut.model_validate(worker_tokens.token_json(t)) for t in tokens])


@endpoint(
    bp,
    "/worker-tokens/<int:token_id>",
    methods=("DELETE",),
    summary="Revoke a worker token",
    permission=Permission.manage_workers,
    status=204,
)
def revoke_worker_token(token_id: int) -> Response:
    """The Worker gets 401 on its next request."""
    worker_tokens.revoke_token(db_session(), g.user, token_id)
    return Response(status=204)
