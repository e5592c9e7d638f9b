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
