"""Tables shared by Node and Network. Each later capability adds its tables here plus a migration."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out on every back-end (SQLite alone would hand back naive times)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive times; store UTC (without tzinfo on SQLite, which cannot keep it)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use pygrid.db.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always aware UTC."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base holding the metadata Alembic migrates."""


class User(Base):
    """A person who logs in: Owner, Admin, Data Scientist or Compliance Officer."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(255))
    # Bumped on password or role change so that tokens issued before it stop working.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class FLProcess(Base):
    """A hosted model-centric FL process: a model, its plans and configs, name + version."""

    __tablename__ = "fl_processes"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_fl_processes_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    client_config: Mapped[dict] = mapped_column(JSON)
    server_config: Mapped[dict] = mapped_column(JSON)
    # names, shapes and dtypes of the parameters: every diff is checked against it
    model_spec: Mapped[list] = mapped_column(JSON)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(16), default="running")
    cycles_done: Mapped[int] = mapped_column(Integer, default=0)
    epsilon_spent: Mapped[float | None] = mapped_column(Float, nullable=True)
    optimizer_state_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Plan(Base):
    """A TorchScript plan of a process, validated at upload; the bytes live in the blob store."""

    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("process_id", "name", name="uq_plans_process_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(
        ForeignKey("fl_processes.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    blob_key: Mapped[str] = mapped_column(String(300))
    ops: Mapped[list] = mapped_column(JSON)


class Checkpoint(Base):
    """Model parameters after a cycle (number 0 is the hosted model)."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("process_id", "number", name="uq_checkpoints_process_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(
        ForeignKey("fl_processes.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Cycle(Base):
    """One round of a process: open -> closing -> closed."""

    __tablename__ = "cycles"
    __table_args__ = (
        UniqueConstraint("process_id", "sequence", name="uq_cycles_process_sequence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_id: Mapped[int] = mapped_column(
        ForeignKey("fl_processes.id", ondelete="CASCADE"), index=True
    )
    sequence: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    diffs_received: Mapped[int] = mapped_column(Integer, default=0)
    closing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    num_samples: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)


class Device(Base):
    """A device (PyGrid's 'worker') that authenticated to train; identified by a random id."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    process_id: Mapped[int] = mapped_column(
        ForeignKey("fl_processes.id", ondelete="CASCADE"), index=True
    )
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ping_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    download_mbps: Mapped[float | None] = mapped_column(Float, nullable=True)
    upload_mbps: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    """A device accepted into a cycle, and its report once it arrives."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("cycle_id", "device_id", name="uq_assignments_cycle_device"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    # sha256 of the request key: a database leak does not let anyone report
    request_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    diff_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    num_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    folded: Mapped[bool] = mapped_column(Boolean, default=False)


class Dataset(Base):
    """A private dataset: metadata and schema here, the columns and mock sample in the blob store."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(String(5000), default="")
    tags: Mapped[list] = mapped_column(JSON)
    # rows, target, source_format, columns: see docs/data-centric.md
    schema: Mapped[dict] = mapped_column(JSON)
    blob_key: Mapped[str] = mapped_column(String(300))
    mock_key: Mapped[str] = mapped_column(String(300))
    mock_generated: Mapped[bool] = mapped_column(Boolean, default=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # a finished DP result costing at most this much is released without a sign-off
    auto_release_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Job(Base):
    """A data scientist's request to run code on a dataset, from review to released result."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    # kept so the history reads well after the dataset is gone
    dataset_name: Mapped[str] = mapped_column(String(200))
    requester_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    # submitted files by name (model, plan, params) -> blob key
    files: Mapped[dict] = mapped_column(JSON)
    ops: Mapped[list] = mapped_column(JSON)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    review_reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    reviewed_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # a fresh random id per claim fences out a Worker that lost its lease
    lease_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(String(4000), nullable=True)
    withheld_reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Budget(Base):
    """How much epsilon one data scientist may spend on one dataset, and how much they have."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("dataset_id", "user_id", name="uq_budgets_dataset_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    epsilon_limit: Mapped[float] = mapped_column(Float)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WorkerToken(Base):
    """A credential a Worker presents to its Node; only a hash of the secret is kept."""

    __tablename__ = "worker_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_label: Mapped[str | None] = mapped_column(String(200), nullable=True)


class AuditEvent(Base):
    """One step of the data-centric story: who did what to which dataset or job, and when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(32), index=True)
    # "user:<email>" or "worker:<token name>#<id>"
    actor: Mapped[str] = mapped_column(String(300))
    dataset_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    detail: Mapped[dict] = mapped_column(JSON)


class JoinToken(Base):
    """A Network admin's invitation for Nodes to join; only a hash of the secret is kept."""

    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    # spent by a compare-and-set UPDATE, so two Nodes racing for the last use cannot both join
    uses_left: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class GridNode(Base):
    """A Node registered with this Network: where it is, when it was last heard of, what it
    publishes. Its status is computed from ``last_seen`` when read, never stored."""

    __tablename__ = "grid_nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # sha256 of the pgn_ credential the Network issued at join
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(500))
    heartbeat_seconds: Mapped[float] = mapped_column(Float)
    # datasets, processes and load as the Node last published them (never rows)
    catalogue: Mapped[dict] = mapped_column(JSON)
    join_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
