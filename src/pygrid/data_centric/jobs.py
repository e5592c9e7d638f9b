"""Job requests: submission (code checked, privacy cost fixed), review, release and results.

The privacy cost of a job is known before it runs: the Node calibrates DP-SGD's noise, or the
statistics mechanisms, from the request, and the accountant's epsilon is what a release charges.
Reviewers see it when they approve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pygrid import plans, serde
from pygrid.auth.roles import Permission, has_permission
from pygrid.data_centric import audit, budgets
from pygrid.data_centric.datasets import get_dataset
from pygrid.data_centric.specs import EvaluateSpec, JobSpec, TrainSpec
from pygrid.db.models import Dataset, Job, User, WorkerToken, utcnow
from pygrid.errors import Conflict, Forbidden, InvalidInput, NotFound
from pygrid.storage import BlobStore

FILE_NAMES = ("model", "plan", "params")
STATES = (
    "pending_review",
    "denied",
    "cancelled",
    "queued",
    "running",
    "finished",
    "failed",
    "released",
)


@dataclass(frozen=True)
class Limits:
    """Largest model, plan or params file a job may carry."""

    max_file_bytes: int


def file_key(job_id: int, name: str) -> str:
    """Where a job's submitted file lives in the blob store."""
    return f"jobs/{job_id}/{name}"


def _invalid(message: str, field: str) -> InvalidInput:
    return InvalidInput(message, {"field": field})


def _columns(dataset: Dataset) -> dict[str, dict[str, Any]]:
    return {column["name"]: column for column in dataset.schema["columns"]}


def _resolve_columns(spec: JobSpec, dataset: Dataset) -> dict[str, Any]:
    columns = _columns(dataset)
    if spec.kind == "statistics":
        return {}
    target = spec.target or dataset.schema.get("target")
    if target is None:
        raise _invalid(
            f"dataset {dataset.name!r} has no target column: name one in spec.target", "target"
        )
    if target not in columns:
        raise _invalid(f"target {target!r} is not a column of dataset {dataset.name!r}", "target")
    features = spec.features or [name for name in columns if name != target]
    unknown = [name for name in features if name not in columns]
    if unknown:
        raise _invalid(
            f"features {unknown} are not columns of dataset {dataset.name!r}", "features"
        )
    if target in features:
        raise _invalid(f"target {target!r} cannot also be a feature", "features")
    if not features:
        raise _invalid("the job needs at least one feature column", "features")
    return {"features": features, "target": target}


def _resolve_statistics(spec: JobSpec, dataset: Dataset) -> dict[str, Any]:
    if spec.statistics is None:
        raise _invalid("a statistics job needs spec.statistics with its columns", "statistics")
    columns = _columns(dataset)
    wanted = []
    for item in spec.statistics.columns:
        column = columns.get(item.name)
        if column is None:
            raise _invalid(
                f"{item.name!r} is not a column of dataset {dataset.name!r}", "statistics"
            )
        if column["shape"]:
            raise _invalid(
                f"column {item.name!r} holds {column['shape']} per row; statistics need one number per row",
                "statistics",
            )
        lower = item.lower if item.lower is not None else column.get("min")
        upper = item.upper if item.upper is not None else column.get("max")
        if lower is None or upper is None:
            raise _invalid(
                f"column {item.name!r} has no published range: give lower and upper", "statistics"
            )
        if float(lower) >= float(upper):
            # a constant column: widen so the clipping range is not empty
            upper = float(lower) + 1.0
        wanted.append(item.model_dump() | {"lower": float(lower), "upper": float(upper)})
    return {"columns": wanted}


def _check_files(spec: JobSpec, files: Mapping[str, bytes], limits: Limits) -> list[str]:
    """Validate the TorchScript files against the allowlist; the ops they use, sorted."""
    unknown = sorted(set(files) - set(FILE_NAMES))
    if unknown:
        raise _invalid(f"unknown files {unknown}; a job takes {list(FILE_NAMES)}", unknown[0])
    if spec.kind == "statistics":
        if files:
            raise _invalid("a statistics job takes no files", sorted(files)[0])
        return []
    has_model, has_plan = "model" in files, "plan" in files
    if has_model == has_plan:
        raise _invalid(f"a {spec.kind} job needs either a model or a plan with params", "model")
    if has_plan != ("params" in files):
        raise _invalid("a plan needs its params (safetensors), and params need a plan", "params")
    if has_model:
        try:
            info = plans.validate_plan(files["model"], max_bytes=limits.max_file_bytes)
        except plans.PlanError as exc:
            raise InvalidInput(f"model: {exc}", exc.detail) from None
        if info.kind is not None:
            raise _invalid(
                f"model: this is a {info.kind} plan; send it as plan, with params", "model"
            )
        return info.ops
    kind: plans.PlanKind = "training" if spec.kind == "train" else "evaluate"
    try:
        info = plans.validate_plan(files["plan"], max_bytes=limits.max_file_bytes, kind=kind)
    except plans.PlanError as exc:
        raise InvalidInput(f"plan: {exc}", exc.detail) from None
    try:
        params = serde.load(files["params"], max_bytes=limits.max_file_bytes)
    except serde.TensorPayloadError as exc:
        raise _invalid(f"params: {exc}", "params") from None
    if info.param_names is not None and list(params) != info.param_names:
        raise _invalid(
            f"params: names {list(params)} do not match the plan's {info.param_names}", "params"
        )
    return info.ops


def _privacy(
    spec: JobSpec, dataset: Dataset, files: Mapping[str, bytes]
) -> tuple[dict[str, Any] | None, float | None, float | None]:
    """The stored privacy section, and the epsilon and delta the job will cost."""
    privacy = spec.privacy
    if privacy is None:
        return None, None, None
    stored = privacy.model_dump(exclude_none=True)
    if spec.kind == "train":
        from pygrid.privacy import dpsgd

        if "plan" in files:
            raise _invalid(
                "DP-SGD needs a model, not a plan: a plan's step cannot be clipped per sample",
                "privacy",
            )
        if privacy.delta is None:
            raise _invalid("DP training needs privacy.delta (e.g. 1e-5, below 1/rows)", "privacy")
        train = spec.train
        assert train is not None
        rows = int(dataset.schema["rows"])
        rate = dpsgd.sample_rate(train.batch_size, rows)
        steps = dpsgd.steps(train.epochs, train.batch_size, rows)
        try:
            sigma = dpsgd.noise_multiplier(privacy.epsilon, privacy.delta, rate, steps)
        except InvalidInput as exc:
            raise _invalid(f"privacy: {exc}", "privacy") from None
        epsilon = dpsgd.epsilon(sigma, rate, steps, privacy.delta)
        stored |= {"noise_multiplier": sigma, "sample_rate": rate, "steps": steps}
        return stored, epsilon, privacy.delta
    if spec.kind == "evaluate":
        # the runner clips nothing per row for plans, and a noisy accuracy needs classes
        evaluate = spec.evaluate
        if (
            "plan" in files
            or privacy.mechanism != "laplace"
            or (evaluate and evaluate.loss != "cross_entropy")
        ):
            raise _invalid(
                "a private evaluation needs a model, loss cross_entropy and the laplace mechanism",
                "privacy",
            )
    if spec.kind == "statistics" and privacy.mechanism == "gaussian":
        if privacy.delta is None:
            raise _invalid("the gaussian mechanism needs privacy.delta", "privacy")
        return stored, privacy.epsilon, privacy.delta
    stored.pop("delta", None)
    return stored, privacy.epsilon, None


def submit_job(
    session: Session,
    store: BlobStore,
    requester: User,
    spec: JobSpec,
    files: Mapping[str, bytes],
    limits: Limits,
) -> Job:
    """Check a request and store it as ``pending_review``."""
    for section in ("train", "evaluate", "statistics"):
        if getattr(spec, section) is not None and section != spec.kind:
            raise _invalid(f"spec.{section} is only for {section} jobs, not {spec.kind}", section)
    dataset = get_dataset(session, spec.dataset_id)
    if spec.kind == "train" and spec.train is None:
        spec = spec.model_copy(update={"train": TrainSpec()})
    if spec.kind == "evaluate" and spec.evaluate is None:
        spec = spec.model_copy(update={"evaluate": EvaluateSpec()})
    stored: dict[str, Any] = {"dataset_id": dataset.id, "kind": spec.kind}
    stored |= _resolve_columns(spec, dataset)
    if spec.kind == "train":
        assert spec.train is not None
        stored["train"] = spec.train.model_dump()
    elif spec.kind == "evaluate":
        assert spec.evaluate is not None
        stored["evaluate"] = spec.evaluate.model_dump()
    else:
        stored["statistics"] = _resolve_statistics(spec, dataset)
    ops = _check_files(spec, files, limits)
    privacy, epsilon, delta = _privacy(spec, dataset, files)
    if privacy is not None:
        stored["privacy"] = privacy
    job = Job(
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        requester_id=requester.id,
        kind=spec.kind,
        state="pending_review",
        spec=stored,
        files={},
        ops=ops,
        epsilon=epsilon,
        delta=delta,
        attempts=0,
    )
    session.add(job)
    session.flush()
    try:
        job.files = {name: file_key(job.id, name) for name in files}
        for name, data in files.items():
            store.put(file_key(job.id, name), data)
        audit.record(
            session,
            "job.submit",
            requester,
            dataset_id=dataset.id,
            job_id=job.id,
            kind=spec.kind,
            epsilon=epsilon,
            ops=len(ops),
        )
        session.commit()
    except BaseException:
        session.rollback()
        for name in files:
            with contextlib.suppress(Exception):
                store.delete(file_key(job.id, name))
        raise
    return job


def is_reviewer(user: User) -> bool:
    """Whether ``user`` sees every job (and its metrics and errors)."""
    return has_permission(user.role, Permission.triage_requests) or has_permission(
        user.role, Permission.manage_budgets
    )


def get_job(session: Session, job_id: int) -> Job:
    """The job with ``job_id``; NotFound otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    return job


def visible_job(session: Session, user: User, job_id: int) -> Job:
    """A job the user may see: their own, or any for reviewers (others' look absent)."""
    job = get_job(session, job_id)
    if job.requester_id != user.id and not is_reviewer(user):
        raise NotFound(f"no job with id {job_id}")
    return job


def list_jobs(session: Session, user: User, state: str | None) -> list[Job]:
    """Jobs the user may see, newest first, optionally in one state."""
    query = select(Job).order_by(Job.id.desc())
    if not is_reviewer(user):
        query = query.where(Job.requester_id == user.id)
    if state is not None and state != "all":
        query = query.where(Job.state == state)
    return list(session.scalars(query))


def _move(session: Session, job: Job, frm: tuple[str, ...], values: dict[str, Any]) -> None:
    """Compare-and-set the job's state: Conflict naming the actual state if someone moved it."""
    result = session.execute(
        update(Job).where(Job.id == job.id, Job.state.in_(frm)).values(**values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        session.refresh(job)
        expected = " or ".join(frm)
        raise Conflict(f"job {job.id} is {job.state}, not {expected}", {"state": job.state})


def approve_job(session: Session, reviewer: User, job_id: int, reason: str | None) -> Job:
    """Queue a pending job for the Workers."""
    job = get_job(session, job_id)
    _move(
        session,
        job,
        ("pending_review",),
        {
            "state": "queued",
            "reviewed_by": reviewer.id,
            "reviewed_at": utcnow(),
            "review_reason": reason,
        },
    )
    audit.record(
        session, "job.approve", reviewer, dataset_id=job.dataset_id, job_id=job.id, reason=reason
    )
    session.commit()
    session.refresh(job)
    return job


def deny_job(session: Session, reviewer: User, job_id: int, reason: str) -> Job:
    """Refuse a pending job, saying why."""
    job = get_job(session, job_id)
    _move(
        session,
        job,
        ("pending_review",),
        {
            "state": "denied",
            "reviewed_by": reviewer.id,
            "reviewed_at": utcnow(),
            "review_reason": reason,
        },
    )
    audit.record(
        session, "job.deny", reviewer, dataset_id=job.dataset_id, job_id=job.id, reason=reason
    )
    session.commit()
    session.refresh(job)
    return job


def cancel_job(session: Session, user: User, job_id: int) -> Job:
    """The requester withdraws a job that has not started."""
    job = visible_job(session, user, job_id)
    if job.requester_id != user.id:
        raise Forbidden("only the data scientist who submitted a job may cancel it")
    _move(session, job, ("pending_review", "queued"), {"state": "cancelled"})
    audit.record(session, "job.cancel", user, dataset_id=job.dataset_id, job_id=job.id)
    session.commit()
    session.refresh(job)
    return job


def release_job(session: Session, who: User | WorkerToken | None, job_id: int) -> Job:
    """Sign off a finished result: charge the requester's budget and release it, both or neither.

    Conflict (nothing charged, ``withheld_reason`` recorded) when the budget does not allow it.
    """
    job = get_job(session, job_id)
    _move(
        session,
        job,
        ("finished",),
        {"state": "released", "released_at": utcnow(), "withheld_reason": None},
    )
    if job.epsilon is not None:
        assert job.dataset_id is not None and job.requester_id is not None
        if not budgets.charge(session, job.dataset_id, job.requester_id, job.epsilon):
            session.rollback()
            return _withhold(session, who, job)
    audit.record(
        session, "job.release", who, dataset_id=job.dataset_id, job_id=job.id, epsilon=job.epsilon
    )
    session.commit()
    session.refresh(job)
    return job


def _withhold(session: Session, who: User | WorkerToken | None, job: Job) -> Job:
    session.refresh(job)
    budget = budgets.budget_of(session, job.dataset_id or 0, job.requester_id or 0)
    limit = budget.epsilon_limit if budget else 0.0
    spent = budget.epsilon_spent if budget else 0.0
    reason = (
        f"privacy budget exhausted: this result costs epsilon {job.epsilon:.4g}, "
        f"{spent:.4g} of {limit:.4g} is spent ({budgets.remaining(budget):.4g} left)"
        if budget
        else f"no privacy budget is set for this data scientist on this dataset; "
        f"this result costs epsilon {job.epsilon:.4g}"
    )
    job.withheld_reason = reason
    audit.record(
        session,
        "job.withhold",
        who,
        dataset_id=job.dataset_id,
        job_id=job.id,
        epsilon=job.epsilon,
        spent=spent,
        limit=limit,
    )
    session.commit()
    raise Conflict(
        f"result withheld: {reason}",
        {"epsilon": job.epsilon, "epsilon_spent": spent, "epsilon_limit": limit},
    )


def auto_release(session: Session, job: Job) -> None:
    """Release a just-finished DP result if its dataset's rule allows it (withhold otherwise)."""
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id is not None else None
    rule = dataset.auto_release_epsilon if dataset else None
    if rule is None or job.epsilon is None or job.epsilon > rule:
        return
    with contextlib.suppress(Conflict):
        release_job(session, None, job.id)


def result_for(session: Session, store: BlobStore, user: User, job_id: int) -> tuple[Job, bytes]:
    """The result's bytes: for the requester once released; for budget managers once finished."""
    job = visible_job(session, user, job_id)
    manager = has_permission(user.role, Permission.manage_budgets)
    if job.result_key is None:
        raise Conflict(f"job {job.id} is {job.state}: it has no result yet", {"state": job.state})
    if job.state != "released" and not manager:
        why = job.withheld_reason or "it is waiting for the data owner's sign-off"
        raise Forbidden(f"the result of job {job.id} is not released: {why}", {"state": job.state})
    data = store.get(job.result_key)
    audit.record(session, "job.download", user, dataset_id=job.dataset_id, job_id=job.id)
    session.commit()
    return job, data


def job_json(session: Session, job: Job, viewer: User) -> dict[str, Any]:
    """A job as ``viewer`` may see it: results and errors only once released, or to reviewers."""
    requester = session.get(User, job.requester_id) if job.requester_id is not None else None
    budget = None
    if job.dataset_id is not None and job.requester_id is not None:
        row = budgets.budget_of(session, job.dataset_id, job.requester_id)
        budget = {
            "limit": row.epsilon_limit if row else 0.0,
            "spent": row.epsilon_spent if row else 0.0,
            "remaining": budgets.remaining(row),
        }
    open_to_viewer = is_reviewer(viewer) or job.state == "released"
    return {
        "id": job.id,
        "dataset_id": job.dataset_id,
        "dataset_name": job.dataset_name,
        "requester_id": job.requester_id,
        "requester_email": requester.email if requester else None,
        "kind": job.kind,
        "state": job.state,
        "spec": job.spec,
        "files": sorted(job.files),
        "ops": job.ops,
        "epsilon": job.epsilon,
        "delta": job.delta,
        "budget": budget,
        "review_reason": job.review_reason,
        "reviewed_by": job.reviewed_by,
        "created_at": job.created_at,
        "reviewed_at": job.reviewed_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "released_at": job.released_at,
        "attempts": job.attempts,
        "withheld_reason": job.withheld_reason,
        "metrics": job.metrics if open_to_viewer else None,
        "error": job.error if is_reviewer(viewer) else None,
        "result_available": job.result_key is not None and open_to_viewer,
    }
