"""Datasets on a Node: upload, catalogue, search, mock samples; the private columns stay here."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid.data_centric import audit
from pygrid.db.models import Dataset, Job, User, utcnow
from pygrid.errors import Conflict, InvalidInput, NotFound
from pygrid.storage import BlobStore

ACTIVE_STATES = ("queued", "running")
# A text column's distinct values are published in the schema: past this many it is more
# likely names or ids than categories, so the owner must declare them on purpose.
MAX_PUBLISHED_CATEGORIES = 50
MAX_TAGS = 20
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,49}$")


def data_key(dataset_id: int) -> str:
    """Where a dataset's private columns live in the blob store."""
    return f"datasets/{dataset_id}/data.safetensors"


def mock_key(dataset_id: int) -> str:
    """Where a dataset's mock sample lives in the blob store."""
    return f"datasets/{dataset_id}/mock.safetensors"


def parse_tags(tags: str | Iterable[str]) -> list[str]:
    """Tags from ``"a, b"`` or a list: lower-case, unique, in order; InvalidInput if malformed."""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    out: list[str] = []
    for item in items:
        tag = str(item).strip().lower()
        if not tag:
            continue
        if not _TAG.match(tag):
            raise InvalidInput(
                f"tag {tag!r} is not allowed: 1-50 of a-z, 0-9, '_', '.', '-'", {"field": "tags"}
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", {"field": "tags"})
    return out


def _check_name_free(session: Session, name: str, but: int | None = None) -> None:
    query = select(Dataset.id).where(Dataset.name == name)
    if but is not None:
        query = query.where(Dataset.id != but)
    if session.scalar(query) is not None:
        raise Conflict(f"a dataset named {name!r} already exists")


def upload_dataset(
    session: Session,
    store: BlobStore,
    owner: User,
    *,
    data: bytes,
    filename: str | None,
    fmt: str | None,
    name: str,
    description: str,
    tags: list[str],
    target: str | None,
    declared: Mapping[str, Any] | None,
    mock: bytes | None,
    mock_filename: str | None,
) -> Dataset:
    """Check and store a dataset and its mock sample (the owner's, or one made from the schema)."""
    from pygrid import datasets

    _check_name_free(session, name)
    ingested = datasets.ingest(data, filename=filename, fmt=fmt, declared=declared, target=target)
    _check_published_categories(ingested.schema, declared)
    if mock is not None:
        try:
            mock_fmt = None
            try:
                datasets.detect_format(mock_filename, None)
            except datasets.DatasetError:  # no telling extension: same format as the data
                mock_fmt = ingested.schema["source_format"]
            mock_columns = datasets.ingest_mock(
                mock, schema=ingested.schema, filename=mock_filename, fmt=mock_fmt
            )
        except datasets.DatasetError as exc:
            raise datasets.DatasetError(f"mock: {exc}", {"field": "mock"}) from None
    else:
        mock_columns = datasets.generate_mock(ingested.schema)
    private = datasets.dump_columns(ingested.columns)
    dataset = Dataset(
        name=name,
        description=description,
        tags=tags,
        schema=ingested.schema,
        blob_key="",
        mock_key="",
        mock_generated=mock is None,
        size_bytes=len(private),
        owner_id=owner.id,
    )
    session.add(dataset)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a dataset named {name!r} already exists") from None
    dataset.blob_key, dataset.mock_key = data_key(dataset.id), mock_key(dataset.id)
    try:
        store.put(dataset.blob_key, private)
        store.put(dataset.mock_key, datasets.dump_columns(mock_columns))
        audit.record(
            session,
            "dataset.upload",
            owner,
            dataset_id=dataset.id,
            name=name,
            rows=ingested.schema["rows"],
            mock_generated=mock is None,
        )
        session.commit()
    except BaseException:
        session.rollback()
        for key in (data_key(dataset.id), mock_key(dataset.id)):
            with contextlib.suppress(Exception):
                store.delete(key)
        raise
    return dataset


def _check_published_categories(
    schema: Mapping[str, Any], declared: Mapping[str, Any] | None
) -> None:
    declared_names = {
        column.get("name")
        for column in (declared or {}).get("columns", [])
        if isinstance(column, Mapping) and column.get("categories") is not None
    }
    for column in schema["columns"]:
        categories = column.get("categories") or []
        if len(categories) > MAX_PUBLISHED_CATEGORIES and column["name"] not in declared_names:
            raise InvalidInput(
                f"column {column['name']!r} has {len(categories)} distinct text values, which the "
                "public schema would list in full; drop the column, or declare its categories in "
                "the schema to publish them on purpose",
                {"field": "data", "column": column["name"]},
            )


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    """The dataset with ``dataset_id``; NotFound otherwise."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id}")
    return dataset


def list_datasets(session: Session) -> list[Dataset]:
    """Every dataset, oldest first."""
    return list(session.scalars(select(Dataset).order_by(Dataset.id)))


def update_dataset(
    session: Session, who: User, dataset_id: int, changes: Mapping[str, Any]
) -> Dataset:
    """Change name, description, tags or the auto-release rule."""
    dataset = get_dataset(session, dataset_id)
    if "name" in changes:
        _check_name_free(session, changes["name"], but=dataset.id)
    for field, value in changes.items():
        setattr(dataset, field, value)
    dataset.updated_at = utcnow()
    audit.record(session, "dataset.update", who, dataset_id=dataset.id, changes=dict(changes))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a dataset named {changes.get('name')!r} already exists") from None
    return dataset


def delete_dataset(session: Session, store: BlobStore, who: User, dataset_id: int) -> None:
    """Delete a dataset and its blobs; Conflict while one of its jobs is queued or running."""
    dataset = get_dataset(session, dataset_id)
    active = session.scalar(
        select(Job.id).where(Job.dataset_id == dataset.id, Job.state.in_(ACTIVE_STATES)).limit(1)
    )
    if active is not None:
        raise Conflict(
            f"job {active} on this dataset is queued or running: wait for it or cancel it first"
        )
    keys = (dataset.blob_key, dataset.mock_key)
    audit.record(session, "dataset.delete", who, dataset_id=dataset.id, name=dataset.name)
    session.delete(dataset)
    session.commit()
    for key in keys:
        with contextlib.suppress(Exception):  # an orphan blob is harmless; a lost row is not
            store.delete(key)


def matches(dataset: Dataset, tags: Iterable[str], q: str | None) -> bool:
    """Whether ``dataset`` carries every tag in ``tags`` and its text contains ``q``."""
    if not set(tags) <= set(dataset.tags):
        return False
    needle = (q or "").strip().lower()
    text = " ".join([dataset.name, dataset.description, *dataset.tags]).lower()
    return not needle or needle in text


def search(session: Session, who: User, tags: list[str], q: str | None) -> list[Dataset]:
    """Datasets carrying every tag in ``tags`` whose name, description or tags contain ``q``."""
    found = [d for d in list_datasets(session) if matches(d, tags, q)]
    audit.record(session, "dataset.search", who, tags=tags, q=q, results=[d.id for d in found])
    session.commit()
    return found


def mock_sample(
    session: Session, store: BlobStore, who: User, dataset_id: int
) -> tuple[Dataset, bytes]:
    """The mock sample of a dataset, as stored (safetensors)."""
    dataset = get_dataset(session, dataset_id)
    data = store.get(dataset.mock_key)
    audit.record(session, "dataset.mock", who, dataset_id=dataset.id)
    session.commit()
    return dataset, data


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    """A dataset as the API shows it: metadata only."""
    return {
        "id": dataset.id,
        "name": dataset.name,
        "description": dataset.description,
        "tags": dataset.tags,
        "schema": dataset.schema,
        "mock_generated": dataset.mock_generated,
        "mock_url": f"/data-centric/datasets/{dataset.id}/mock",
        "size_bytes": dataset.size_bytes,
        "auto_release_epsilon": dataset.auto_release_epsilon,
        "owner_id": dataset.owner_id,
        "created_at": dataset.created_at,
        "updated_at": dataset.updated_at,
    }
