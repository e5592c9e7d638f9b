"""``/model-centric/*``: PyGrid's model-centric FL protocol over HTTP.

Views parse and shape; every decision is in ``pygrid.model_centric``. Device routes are
authorised by the worker_id and request_key the protocol hands out, not by user tokens.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, ConfigDict, Field, Json

from pygrid.auth.roles import Permission
from pygrid.errors import InvalidInput
from pygrid.model_centric import cycles, processes
from pygrid.model_centric.configs import ClientConfig, ServerConfig
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint
from pygrid.server.transfer import STREAM_CHUNK, file_field, stream_blob

bp = Blueprint("model_centric", __name__, url_prefix="/model-centric")

PLAN_PREFIX = "plan:"
MAX_SPEED_TEST_BYTES = 16 * 1024 * 1024

Name = Annotated[str, Field(min_length=1, max_length=100)]
Version = Annotated[str, Field(min_length=1, max_length=50)]
WorkerId = Annotated[str, Field(min_length=1, max_length=64)]
RequestKey = Annotated[str, Field(min_length=1, max_length=200)]
Speed = Annotated[float, Field(ge=0, le=1e9)]


class Strict(BaseModel):
    """Request models refuse unknown fields."""

    model_config = ConfigDict(extra="forbid")


class HostTrainingForm(Strict):
    """Text fields of ``POST host-training``; files: ``model`` and ``plan:<name>`` (at least
    ``plan:training_plan``)."""

    name: Name
    version: Version
    client_config: Json[ClientConfig]
    server_config: Json[ServerConfig]


class Hosted(BaseModel):
    """A hosted process."""

    process_id: int
    name: str
    version: str


class AuthenticateRequest(Strict):
    """``POST authenticate``."""

    model_name: Name
    model_version: Version | None = None
    auth_token: Annotated[str, Field(max_length=16_384)] | None = None


class Authenticated(BaseModel):
    """A device's id for the rest of the protocol."""

    status: str = "success"
    worker_id: str
    requires_speed_test: bool


class SpeedTestQuery(Strict):
    """``GET/POST speed-test``."""

    worker_id: WorkerId
    random: Annotated[str, Field(max_length=64)] | None = None
    size: Annotated[int, Field(ge=1, le=MAX_SPEED_TEST_BYTES)] = 1024 * 1024


class CycleRequest(Strict):
    """``POST cycle-request``: speeds in Mbit/s and ping in ms, as the device measured them."""

    worker_id: WorkerId
    model: Name
    version: Version | None = None
    ping: Speed | None = None
    download: Speed | None = None
    upload: Speed | None = None


class DownloadQuery(Strict):
    """``GET get-model``."""

    worker_id: WorkerId
    request_key: RequestKey
    model_id: int


class PlanQuery(Strict):
    """``GET get-plan``."""

    worker_id: WorkerId
    request_key: RequestKey
    plan_id: int


class ReportForm(Strict):
    """Text fields of ``POST report``; file: ``diff`` (safetensors, original - trained)."""

    worker_id: WorkerId
    request_key: RequestKey
    num_samples: Annotated[int, Field(ge=1, le=10**12)]
    metrics: Json[dict[str, Any]] = Field(default_factory=dict)


class Ok(BaseModel):
    """A plain success."""

    status: str = "success"


class RetrieveQuery(Strict):
    """``GET retrieve-model``."""

    name: Name
    version: Version
    checkpoint: Annotated[str, Field(max_length=20)] = "latest"


def _limits() -> processes.Limits:
    size = current_app.config["MAX_CONTENT_LENGTH"]
    return processes.Limits(max_model_bytes=size, max_plan_bytes=size)


def _fl_metrics() -> Any:
    return current_app.extensions["pygrid.metrics"]


@endpoint(
    bp,
    "/host-training",
    methods=("POST",),
    summary="Host a model, its plans and configs",
    permission=Permission.host_processes,
    form=HostTrainingForm,
    files=("model", "plan:training_plan"),
    response=Hosted,
    status=201,
)
def host_training(form: HostTrainingForm) -> Hosted:
    """Create an FL process and open its first cycle."""
    if (form.client_config.name, form.client_config.version) != (form.name, form.version):
        raise InvalidInput("client_config name and version must equal the form's name and version")
    plan_files = {
        field[len(PLAN_PREFIX) :]: upload.read()
        for field, upload in request.files.items()
        if field.startswith(PLAN_PREFIX)
    }
    unknown = sorted(f for f in request.files if f != "model" and not f.startswith(PLAN_PREFIX))
    if unknown:
        raise InvalidInput(f"unknown file fields: {', '.join(unknown)}", {"fields": unknown})
    process = processes.host_process(
        db_session(),
        current_app.extensions["pygrid.blobs"],
        g.user,
        form.client_config,
        form.server_config,
        file_field("model"),
        plan_files,
        _limits(),
    )
    return Hosted(process_id=process.id, name=process.name, version=process.version)


@endpoint(
    bp,
    "/authenticate",
    methods=("POST",),
    summary="A device joins a process; returns its worker_id",
    public=True,
    body=AuthenticateRequest,
    response=Authenticated,
)
def authenticate(body: AuthenticateRequest) -> Authenticated:
    """Check the device token (if the process needs one) and issue a worker_id."""
    device, speed_test = cycles.authenticate(
        db_session(), body.model_name, body.model_version, body.auth_token
    )
    return Authenticated(worker_id=device.id, requires_speed_test=speed_test)


@endpoint(
    bp,
    "/speed-test",
    summary="Bytes for a download-speed measurement",
    public=True,
    query=SpeedTestQuery,
)
def speed_test_download(query: SpeedTestQuery) -> Response:
    """Random bytes the device times itself downloading."""
    cycles.get_device(db_session(), query.worker_id)
    return Response(os.urandom(query.size), mimetype="application/octet-stream")


@endpoint(
    bp,
    "/speed-test",
    methods=("POST",),
    summary="Accept bytes for an upload-speed measurement",
    public=True,
    query=SpeedTestQuery,
)
def speed_test_upload(query: SpeedTestQuery) -> dict[str, Any]:
    """Read and discard the body the device times itself uploading."""
    cycles.get_device(db_session(), query.worker_id)
    received = 0
    while chunk := request.stream.read(STREAM_CHUNK):
        received += len(chunk)
    return {"status": "success", "bytes": received}


@endpoint(
    bp,
    "/cycle-request",
    methods=("POST",),
    summary="Ask to train in the current cycle",
    public=True,
    body=CycleRequest,
)
def cycle_request(body: CycleRequest) -> dict[str, Any]:
    """Accepted with a request key, or rejected with seconds until the next chance."""
    speeds = {"ping": body.ping, "download": body.download, "upload": body.upload}
    answer = cycles.request_cycle(db_session(), body.worker_id, body.model, body.version, speeds)
    if isinstance(answer, cycles.Accepted):
        _fl_metrics().cycle_requests.labels("accepted").inc()
        return answer.as_json()
    _fl_metrics().cycle_requests.labels("rejected").inc()
    return answer


@endpoint(
    bp,
    "/get-model",
    summary="Download the cycle's model (safetensors)",
    public=True,
    query=DownloadQuery,
)
def get_model(query: DownloadQuery) -> Response:
    """The checkpoint the request key opens."""
    checkpoint = cycles.authorise_model(
        db_session(), query.worker_id, query.request_key, query.model_id
    )
    return stream_blob(checkpoint.blob_key)


@endpoint(bp, "/get-plan", summary="Download a plan (TorchScript)", public=True, query=PlanQuery)
def get_plan(query: PlanQuery) -> Response:
    """The plan the request key opens."""
    plan = cycles.authorise_plan(db_session(), query.worker_id, query.request_key, query.plan_id)
    return stream_blob(plan.blob_key)


@endpoint(
    bp,
    "/report",
    methods=("POST",),
    summary="Report a diff (original - trained) with metrics",
    public=True,
    form=ReportForm,
    files=("diff",),
    response=Ok,
)
def report(form: ReportForm) -> Ok:
    """Store the diff durably; the cycle closes when full or at its deadline."""
    metrics = _fl_metrics()
    try:
        cycles.report(
            db_session(),
            current_app.extensions["pygrid.blobs"],
            form.worker_id,
            form.request_key,
            form.num_samples,
            form.metrics,
            file_field("diff"),
            current_app.config["MAX_CONTENT_LENGTH"],
        )
    except Exception:
        metrics.reports.labels("rejected").inc()
        raise
    metrics.reports.labels("accepted").inc()
    current_app.extensions["pygrid.scheduler"].poke()
    return Ok()


@endpoint(
    bp,
    "/retrieve-model",
    summary="Download a checkpoint of your process (safetensors)",
    permission=Permission.host_processes,
    query=RetrieveQuery,
)
def retrieve_model(query: RetrieveQuery) -> Response:
    """Checkpoint 'latest' or a number, for the user who hosted the process."""
    session = db_session()
    process = processes.find_process(session, query.name, query.version)
    processes.check_may_manage(g.user, process)
    return stream_blob(processes.find_checkpoint(session, process, query.checkpoint).blob_key)


@endpoint(bp, "/processes", summary="Your FL processes", permission=Permission.host_processes)
def list_processes() -> dict[str, Any]:
    """Every process the user may see, with its status."""
    session = db_session()
    return {
        "processes": [
            processes.process_status(session, p)
            for p in processes.visible_processes(session, g.user)
        ]
    }


@endpoint(
    bp,
    "/processes/<int:process_id>",
    summary="One FL process",
    permission=Permission.host_processes,
)
def get_process(process_id: int) -> dict[str, Any]:
    """Configs, cycles with weighted device metrics, checkpoints."""
    session = db_session()
    process = processes.get_process(session, process_id)
    processes.check_may_manage(g.user, process)
    return processes.process_status(session, process)
