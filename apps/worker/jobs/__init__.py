"""The job kinds a Worker runs (`train`, `evaluate`, `statistics`), one module each.

A kind's module has ``run(job: Job) -> Result``. Modules are imported by name only when their
kind runs: a ``statistics`` job never imports torch. This package itself needs NumPy at most.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "KINDS",
    "Job",
    "JobError",
    "Result",
    "features",
    "integer",
    "loss_name",
    "number",
    "run",
    "target",
]

#: kind -> module holding its ``run``
KINDS = {
    "train": "pygrid.apps.worker.jobs.train",
    "evaluate": "pygrid.apps.worker.jobs.evaluate",
    "statistics": "pygrid.apps.worker.jobs.statistics",
}

LOSSES = ("cross_entropy", "mse")


class JobError(Exception):
    """The job cannot run as asked; the message is the reason the requester sees."""


@dataclass(frozen=True)
class Result:
    """What a job produces: a safetensors payload and its metrics."""

    payload: bytes
    metrics: dict[str, float]


@dataclass(frozen=True)
class Job:
    """A job directory as the Worker wrote it: ``job.json``, ``data.safetensors``, files."""

    job_id: int
    kind: str
    spec: dict[str, Any]
    schema: dict[str, Any]
    directory: Path

    @classmethod
    def read(cls, directory: Path) -> Job:
        """Read and check ``job.json`` in ``directory``."""
        try:
            raw = json.loads((directory / "job.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"no job.json in {directory}") from None
        except ValueError as exc:
            raise JobError(f"job.json is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise JobError("job.json must hold a JSON object")
        kind = raw.get("kind")
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}; expected one of: " + ", ".join(KINDS))
        spec, schema = raw.get("spec"), raw.get("schema")
        if not isinstance(spec, dict) or not isinstance(schema, dict):
            raise JobError("job.json needs objects 'spec' and 'schema'")
        job_id = raw.get("job_id")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise JobError("job.json needs an integer 'job_id'")
        return cls(job_id, kind, spec, schema, directory)

    def file(self, name: str) -> Path | None:
        """The path of a submitted file (``model.pt``, ``plan.pt``, ``params.safetensors``)."""
        path = self.directory / name
        return path if path.is_file() else None

    def section(self, name: str) -> dict[str, Any]:
        """``spec[name]`` (e.g. ``"train"``), ``{}`` when absent."""
        value = self.spec.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise JobError(f"spec.{name} must be an object")
        return value

    @property
    def privacy(self) -> dict[str, Any] | None:
        """``spec.privacy``, or None for a job without differential privacy."""
        return self.section("privacy") or None

    def columns(self) -> dict[str, np.ndarray]:
        """The private columns, checked to share one row count."""
        from safetensors.numpy import load_file

        path = self.directory / "data.safetensors"
        if not path.is_file():
            raise JobError("no data.safetensors in the job directory")
        try:
            columns = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise JobError(f"data.safetensors is not readable: {exc}") from None
        rows = {name: array.shape[0] if array.ndim else None for name, array in columns.items()}
        if any(count is None for count in rows.values()) or len(set(rows.values())) > 1:
            raise JobError(f"data columns do not share one row count: {rows}")
        if not columns:
            raise JobError("data.safetensors holds no columns")
        if not next(iter(rows.values())):
            raise JobError("the dataset has no rows")
        return columns

    def column_names(self, columns: Mapping[str, Any]) -> tuple[list[str], str | None]:
        """``spec.features`` and ``spec.target``, checked against the data."""
        target = self.spec.get("target")
        if target is not None and not isinstance(target, str):
            raise JobError("spec.target must be a column name")
        names = self.spec.get("features")
        if names is None:
            names = [name for name in columns if name != target]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise JobError("spec.features must be a non-empty list of column names")
        for name in [*names, *([target] if target else [])]:
            if name not in columns:
                raise JobError(f"column {name!r} is not in the dataset")
        if target in names:
            raise JobError(f"column {target!r} is both a feature and the target")
        return names, target


def number(section: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    """``section[key]`` as a finite float (``default`` when absent); JobError otherwise."""
    value = section.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(float(value))
    ):
        raise JobError(f"{where}.{key} must be a finite number, got {value!r}")
    return float(value)


def integer(section: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """``section[key]`` as a positive int (``default`` when absent); JobError otherwise."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JobError(f"{where}.{key} must be a positive integer, got {value!r}")
    return value


def features(columns: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The ``names`` columns, each flattened per row, concatenated as float32 ``[rows, F]``."""
    import numpy as np

    rows = len(columns[names[0]])
    parts = [np.asarray(columns[name]).reshape(rows, -1).astype(np.float32) for name in names]
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def target(columns: Mapping[str, np.ndarray], name: str | None, loss: str) -> np.ndarray:
    """The target column: int64 ``[rows]`` for ``cross_entropy``, float32 otherwise."""
    import numpy as np

    if name is None:
        raise JobError("the job has no target column: set spec.target or the dataset's target")
    column = np.asarray(columns[name])
    if loss != "cross_entropy":
        return np.ascontiguousarray(column.astype(np.float32))
    if column.ndim != 1:
        raise JobError(
            f"cross_entropy needs a target of class indices, one per row; column {name!r} has "
            f"per-row shape {list(column.shape[1:])}"
        )
    if column.dtype.kind == "f" and not np.array_equal(column, np.round(column)):
        raise JobError(f"cross_entropy needs integer class indices; column {name!r} has fractions")
    return np.ascontiguousarray(column.astype(np.int64))


def loss_name(section: Mapping[str, Any], where: str) -> str:
    """``section["loss"]``, ``cross_entropy`` by default."""
    loss = section.get("loss", "cross_entropy")
    if loss not in LOSSES:
        raise JobError(f"{where}.loss must be one of: " + ", ".join(LOSSES) + f"; got {loss!r}")
    return str(loss)


def run(job: Job) -> Result:
    """Run ``job`` with its kind's module, imported now."""
    module = importlib.import_module(KINDS[job.kind])
    result: Result = module.run(job)
    return result
