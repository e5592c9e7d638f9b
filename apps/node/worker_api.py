"""``/data-centric/worker/*``: the Worker protocol. Worker tokens only; every call after the
claim names the lease, and a Worker that lost its lease is refused (409 lease_lost)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, g
from pydantic import BaseModel, Field

from pygrid.data_centric import queue
from pygrid.data_centric.specs import Strict
from pygrid.errors import InvalidInput, NotFound
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint
from pygrid.server.transfer import file_field, stream_blob

bp = Blueprint("worker", __name__, url_prefix="/data-centric/worker")

MAX_WAIT = 30.0
POLL = 0.5
LeaseId = Annotated[str, Field(min_length=1, max_length=64)]


class ClaimRequest(Strict):
    """``POST claim``: wait up to ``wait`` seconds for a job."""

    wait: Annotated[float, Field(ge=0, le=MAX_WAIT)] = 0
    worker: Annotated[str, Field(max_length=200)] | None = None


class Claim(BaseModel):
    """A leased job; fetch its data and files, heartbeat, then report."""

    job_id: int
    lease_id: str
    lease_seconds: float
    kind: str
    spec: dict[str, Any]
    schema_: dict[str, Any] | None = Field(alias="schema")
    files: list[str]


class LeaseRequest(Strict):
    """``POST heartbeat``."""

    lease_id: LeaseId


class LeaseQuery(Strict):
    """``GET data`` and ``GET files/<name>``."""

    lease_id: LeaseId


class Lease(BaseModel):
    """When the lease runs out unless renewed."""

    lease_expires_at: datetime


class ResultForm(Strict):
    """Text fields of ``POST result``; file: ``result`` (safetensors)."""

    lease_id: LeaseId
    metrics: Annotated[str, Field(max_length=100_000)] = "{}"


class Failure(Strict):
    """``POST fail``."""

    lease_id: LeaseId
    error: Annotated[str, Field(max_length=100_000)]


class Outcome(BaseModel):
    """The job's state after a report."""

    job_id: int
    state: str


def _lease_seconds() -> float:
    return float(current_app.config["PYGRID_SETTINGS"].lease_seconds)


@endpoint(
    bp,
    "/claim",
    methods=("POST",),
    summary="Lease the oldest queued job (long-polls up to wait seconds; 204 if none)",
    worker=True,
    body=ClaimRequest,
    response=Claim,
)
def claim(body: ClaimRequest) -> Any:
    """Claim, or wait for a job to be approved, or answer 204."""
    deadline = time.monotonic() + body.wait
    signal = current_app.extensions["pygrid.queue"]
    session = db_session()
    lease = _lease_seconds()
    queue.touch_token(session, g.worker, body.worker)
    while True:
        job = queue.claim_job(session, g.worker, body.worker, lease)
        if job is not None:
            current_app.extensions["pygrid.metrics"].jobs_claimed.inc()
            return Claim.model_validate(queue.claim_json(session, job, lease))
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status=204)
        # approvals in this process wake us at once; other replicas' are seen at the next poll
        signal.wait(min(POLL, left))


@endpoint(
    bp,
    "/jobs/<int:job_id>/heartbeat",
    methods=("POST",),
    summary="Renew the lease on a job",
    worker=True,
    body=LeaseRequest,
    response=Lease,
)
def heartbeat(job_id: int, body: LeaseRequest) -> Lease:
    """409 lease_lost when the lease already ran out."""
    job = queue.heartbeat(db_session(), g.worker, job_id, body.lease_id, _lease_seconds())
    assert job.lease_expires_at is not None
    return Lease(lease_expires_at=job.lease_expires_at)


@endpoint(
    bp,
    "/jobs/<int:job_id>/data",
    summary="The private columns of the job's dataset (safetensors), for the lease holder",
    worker=True,
    query=LeaseQuery,
    content="application/octet-stream",
)
def data(job_id: int, query: LeaseQuery) -> Response:
    """Only a Worker holding the lease ever receives private rows."""
    from pygrid.db.models import Dataset

    session = db_session()
    job = queue.held_job(session, g.worker, job_id, query.lease_id)
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id is not None else None
    if dataset is None:
        raise NotFound(f"the dataset of job {job_id} was deleted")
    return stream_blob(dataset.blob_key)


@endpoint(
    bp,
    "/jobs/<int:job_id>/files/<name>",
    summary="A file the job was submitted with (model, plan or params)",
    worker=True,
    query=LeaseQuery,
    content="application/octet-stream",
)
def job_file(job_id: int, name: str, query: LeaseQuery) -> Response:
    """For the lease holder."""
    job = queue.held_job(db_session(), g.worker, job_id, query.lease_id)
    if name not in job.files:
        raise NotFound(f"job {job_id} has no file {name!r}; it has {sorted(job.files)}")
    return stream_blob(job.files[name])


@endpoint(
    bp,
    "/jobs/<int:job_id>/result",
    methods=("POST",),
    summary="Report a job's result (safetensors) and metrics",
    worker=True,
    form=ResultForm,
    files=("result",),
    response=Outcome,
)
def report(job_id: int, form: ResultForm) -> Outcome:
    """The job is finished (and released at once if an auto-release rule allows it)."""
    try:
        metrics = queue.check_metrics(json.loads(form.metrics))
    except ValueError:
        raise InvalidInput("metrics is not valid JSON", {"field": "metrics"}) from None
    job = queue.finish_job(
        db_session(),
        current_app.extensions["pygrid.blobs"],
        g.worker,
        job_id,
        form.lease_id,
        file_field("result"),
        metrics,
        current_app.config["MAX_CONTENT_LENGTH"],
    )
    current_app.extensions["pygrid.metrics"].jobs_finished.labels(outcome="finished").inc()
    return Outcome(job_id=job.id, state=job.state)


@endpoint(
    bp,
    "/jobs/<int:job_id>/fail",
    methods=("POST",),
    summary="Report that a job failed, with the error",
    worker=True,
    body=Failure,
    response=Outcome,
)
def fail(job_id: int, body: Failure) -> Outcome:
    """Reviewers see the error; the requester sees that it failed."""
    job = queue.fail_job(db_session(), g.worker, job_id, body.lease_id, body.error)
    current_app.extensions["pygrid.metrics"].jobs_finished.labels(outcome="failed").inc()
    return Outcome(job_id=job.id, state=job.state)
