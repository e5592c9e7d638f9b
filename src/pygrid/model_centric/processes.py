"""Hosting an FL process, finding it, and reading its checkpoints and status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid import plans, serde
from pygrid.auth.roles import Role
from pygrid.db.models import Checkpoint, Cycle, FLProcess, Plan, User, utcnow
from pygrid.errors import Conflict, Forbidden, InvalidInput, NotFound
from pygrid.model_centric.configs import ClientConfig, ServerConfig
from pygrid.storage import BlobStore

TRAINING_PLAN = "training_plan"


@dataclass(frozen=True)
class Limits:
    """Size limits on what devices and hosts upload."""

    max_model_bytes: int
    max_plan_bytes: int


def checkpoint_key(process_id: int, number: int) -> str:
    """Blob key of checkpoint ``number``."""
    return f"fl/{process_id}/checkpoints/{number}.safetensors"


def plan_key(process_id: int, name: str) -> str:
    """Blob key of a plan."""
    return f"fl/{process_id}/plans/{name}.pt"


def diff_key(process_id: int, sequence: int, assignment_id: int, upload: str) -> str:
    """Blob key of one upload of a device's diff (``upload`` tells racing uploads apart)."""
    return f"fl/{process_id}/cycles/{sequence}/diffs/{assignment_id}-{upload}.safetensors"


def optimizer_key(process_id: int, number: int) -> str:
    """Blob key of the server optimiser's state after checkpoint ``number``."""
    return f"fl/{process_id}/optimizer/{number}.safetensors"


def open_cycle(session: Session, process: FLProcess, sequence: int) -> Cycle:
    """Add the cycle ``sequence`` of ``process``, open from now until its deadline."""
    config = ServerConfig.model_validate(process.server_config)
    now = utcnow()
    cycle = Cycle(
        process_id=process.id,
        sequence=sequence,
        state="open",
        started_at=now,
        deadline=now + timedelta(seconds=config.cycle_length),
        accepted=0,
        diffs_received=0,
        extensions=0,
        num_samples=0,
    )
    session.add(cycle)
    return cycle


def host_process(
    session: Session,
    store: BlobStore,
    owner: User,
    client_config: ClientConfig,
    server_config: ServerConfig,
    model: bytes,
    plan_files: dict[str, bytes],
    limits: Limits,
) -> FLProcess:
    """Validate everything, store the model and plans, and open cycle 1."""
    from pygrid.aggregation import DPFedAvg, would_exceed

    name, version = client_config.name, client_config.version
    try:
        params = serde.load(model, max_bytes=limits.max_model_bytes)
    except serde.TensorPayloadError as exc:
        raise InvalidInput(f"model: {exc}", {"field": "model"}) from None
    if not params:
        raise InvalidInput("model: holds no tensors", {"field": "model"})
    if TRAINING_PLAN not in plan_files:
        raise InvalidInput(
            f"a plan named {TRAINING_PLAN!r} is required (file field plan:{TRAINING_PLAN})"
        )
    plan_ops = {}
    for plan_name, data in plan_files.items():
        try:
            plan_ops[plan_name] = plans.validate_plan(data, max_bytes=limits.max_plan_bytes).ops
        except plans.PlanError as exc:
            raise InvalidInput(
                f"plan {plan_name!r}: {exc}", {"field": f"plan:{plan_name}"}
            ) from None
    aggregation = server_config.aggregation
    if isinstance(aggregation, DPFedAvg) and would_exceed(0, aggregation):
        raise InvalidInput("aggregation: target_epsilon is exceeded by the very first cycle")
    if session.scalar(
        select(FLProcess.id).where(FLProcess.name == name, FLProcess.version == version)
    ):
        raise Conflict(f"an FL process {name} {version} already exists")

    process = FLProcess(
        name=name,
        version=version,
        client_config=client_config.model_dump(mode="json"),
        server_config=server_config.model_dump(mode="json"),
        model_spec=serde.spec_to_json(serde.spec_of(params)),
        owner_id=owner.id,
        state="running",
        cycles_done=0,
    )
    session.add(process)
    try:
        session.flush()  # assigns process.id for the blob keys
        store.put(checkpoint_key(process.id, 0), model)
        for plan_name, data in plan_files.items():
            store.put(plan_key(process.id, plan_name), data)
            session.add(
                Plan(
                    process_id=process.id,
                    name=plan_name,
                    blob_key=plan_key(process.id, plan_name),
                    ops=plan_ops[plan_name],
                )
            )
        session.add(
            Checkpoint(process_id=process.id, number=0, blob_key=checkpoint_key(process.id, 0))
        )
        open_cycle(session, process, 1)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"an FL process {name} {version} already exists") from None
    return process


def find_process(session: Session, name: str, version: str | None) -> FLProcess:
    """The process ``name`` at ``version`` (the newest hosted one if None); NotFound otherwise."""
    query = select(FLProcess).where(FLProcess.name == name)
    if version is not None:
        query = query.where(FLProcess.version == version)
    process = session.scalar(query.order_by(FLProcess.id.desc()).limit(1))
    if process is None:
        what = f"{name} version {version}" if version else name
        raise NotFound(f"no FL process named {what}")
    return process


def get_process(session: Session, process_id: int) -> FLProcess:
    """The process with ``process_id``; NotFound otherwise."""
    process = session.get(FLProcess, process_id)
    if process is None:
        raise NotFound(f"no FL process with id {process_id}")
    return process


def check_may_manage(user: User, process: FLProcess) -> None:
    """Only the process's host, the Owner and Admins see its models and details."""
    if process.owner_id != user.id and user.role not in (Role.owner, Role.admin):
        raise Forbidden("only the user who hosted this process (or an Owner/Admin) may do this")


def latest_checkpoint(session: Session, process_id: int) -> Checkpoint:
    """The newest checkpoint of a process (there is always number 0)."""
    checkpoint = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.process_id == process_id)
        .order_by(Checkpoint.number.desc())
        .limit(1)
    )
    assert checkpoint is not None, "a process always has checkpoint 0"
    return checkpoint


def find_checkpoint(session: Session, process: FLProcess, which: str) -> Checkpoint:
    """Checkpoint ``which``: 'latest' or a number."""
    if which == "latest":
        return latest_checkpoint(session, process.id)
    if not which.isdigit():
        raise InvalidInput("checkpoint must be 'latest' or a number", {"field": "checkpoint"})
    checkpoint = session.scalar(
        select(Checkpoint).where(
            Checkpoint.process_id == process.id, Checkpoint.number == int(which)
        )
    )
    if checkpoint is None:
        raise NotFound(f"process {process.name} {process.version} has no checkpoint {which}")
    return checkpoint


def visible_processes(session: Session, user: User) -> list[FLProcess]:
    """Processes ``user`` may see: all for Owner/Admin, their own otherwise."""
    query = select(FLProcess).order_by(FLProcess.id)
    if user.role not in (Role.owner, Role.admin):
        query = query.where(FLProcess.owner_id == user.id)
    return list(session.scalars(query))


def process_status(session: Session, process: FLProcess) -> dict[str, Any]:
    """Configs (secrets masked), cycles with their metrics, and checkpoints."""
    cycles = session.scalars(
        select(Cycle).where(Cycle.process_id == process.id).order_by(Cycle.sequence)
    )
    checkpoints = session.scalars(
        select(Checkpoint).where(Checkpoint.process_id == process.id).order_by(Checkpoint.number)
    )
    plan_rows = session.scalars(select(Plan).where(Plan.process_id == process.id).order_by(Plan.id))
    return {
        "id": process.id,
        "name": process.name,
        "version": process.version,
        "state": process.state,
        "created_at": process.created_at,
        "cycles_done": process.cycles_done,
        "epsilon_spent": process.epsilon_spent,
        "client_config": process.client_config,
        "server_config": ServerConfig.model_validate(process.server_config).public_dict(),
        "model_spec": process.model_spec,
        "plans": [{"id": p.id, "name": p.name, "ops": p.ops} for p in plan_rows],
        "cycles": [
            {
                "sequence": c.sequence,
                "state": c.state,
                "started_at": c.started_at,
                "deadline": c.deadline,
                "accepted": c.accepted,
                "diffs_received": c.diffs_received,
                "num_samples": c.num_samples,
                "extensions": c.extensions,
                "closed_at": c.closed_at,
                "metrics": c.metrics,
                "epsilon": c.epsilon,
            }
            for c in cycles
        ],
        "checkpoints": [{"number": c.number, "created_at": c.created_at} for c in checkpoints],
    }
