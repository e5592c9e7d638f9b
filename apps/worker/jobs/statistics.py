"""``statistics``: count, sum, mean and histogram of 1-D columns, optionally with DP noise.

NumPy only: this kind never imports torch. Values are clipped to ``[lower, upper]`` (by default
the column's published range from the schema). Result tensors are float64 and named
``<column>.<stat>``, plus ``<column>.bin_edges`` with a histogram. With privacy, the epsilon (and
delta, for the Gaussian mechanism) is split evenly over every number released, ``mean`` counting
twice (its own noisy sum and count), so the job costs exactly what was asked (see
`pygrid.privacy.mechanisms`). The metric ``queries`` is that number of noisy releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pygrid.apps.worker.jobs import Job, JobError, Result, integer, number

if TYPE_CHECKING:
    import numpy as np

    from pygrid.privacy.mechanisms import QueryNoise

__all__ = ["ColumnRequest", "QUERIES", "STATS", "compute", "query_noise", "requests", "run"]

STATS = ("count", "sum", "mean", "histogram")
#: How many noisy releases each statistic takes from the budget.
QUERIES = {"count": 1, "sum": 1, "mean": 2, "histogram": 1}
DEFAULT_BINS = 10
MAX_BINS = 10_000


@dataclass(frozen=True)
class ColumnRequest:
    """The statistics asked of one column, with its clipping bounds."""

    name: str
    stats: tuple[str, ...]
    lower: float
    upper: float
    bins: int

    @property
    def queries(self) -> int:
        """Noisy releases this request takes."""
        return sum(QUERIES[stat] for stat in self.stats)


def _published(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    for column in schema.get("columns") or []:
        if isinstance(column, dict) and column.get("name") == name:
            return column
    return {}


def requests(
    section: Mapping[str, Any], schema: Mapping[str, Any], columns: Mapping[str, np.ndarray]
) -> list[ColumnRequest]:
    """The checked ``spec.statistics.columns``, bounds defaulting to the schema's range."""
    asked = section.get("columns")
    if not isinstance(asked, list) or not asked:
        raise JobError("spec.statistics.columns must be a non-empty list")
    found: list[ColumnRequest] = []
    for entry in asked:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise JobError("each entry of spec.statistics.columns needs a column 'name'")
        name = entry["name"]
        where = f"spec.statistics column {name!r}"
        if name not in columns:
            raise JobError(f"column {name!r} is not in the dataset")
        if any(other.name == name for other in found):
            raise JobError(f"column {name!r} is listed twice in spec.statistics.columns")
        if columns[name].ndim != 1:
            raise JobError(
                f"statistics need a 1-D column (one number per row); {name!r} has per-row "
                f"shape {list(columns[name].shape[1:])}"
            )
        stats = entry.get("stats", list(STATS))
        if (
            not isinstance(stats, list)
            or not stats
            or any(stat not in STATS for stat in stats)
            or len(set(stats)) != len(stats)
        ):
            raise JobError(f"{where}: stats must be distinct names from: " + ", ".join(STATS))
        published = _published(schema, name)
        bounds = {}
        for key, fallback in (("lower", "min"), ("upper", "max")):
            value = entry.get(key, published.get(fallback))
            if value is None:
                raise JobError(
                    f"{where}: no {key} bound given and the schema publishes no {fallback}"
                )
            bounds[key] = number({key: value}, key, where)
        if bounds["lower"] > bounds["upper"]:
            raise JobError(f"{where}: lower {bounds['lower']} is above upper {bounds['upper']}")
        bins = integer(entry, "bins", where, DEFAULT_BINS)
        if bins > MAX_BINS:
            raise JobError(f"{where}: at most {MAX_BINS} bins")
        found.append(ColumnRequest(name, tuple(stats), bounds["lower"], bounds["upper"], bins))
    return found


def query_noise(privacy: Mapping[str, Any], queries: int) -> QueryNoise:
    """One release's share of the job's budget: ``epsilon / queries`` (and ``delta / queries``)."""
    from pygrid.privacy.mechanisms import PrivacyError, QueryNoise, split_budget

    mechanism = privacy.get("mechanism", "laplace")
    epsilon = number(privacy, "epsilon", "spec.privacy")
    delta = privacy.get("delta") if mechanism == "gaussian" else None
    if mechanism == "gaussian" and delta is None:
        raise JobError("the gaussian mechanism needs spec.privacy.delta")
    try:
        share, delta_share = split_budget(epsilon, delta, queries)
        return QueryNoise(mechanism, share, delta_share)
    except PrivacyError as exc:
        raise JobError(f"spec.privacy: {exc}") from None


def compute(
    columns: Mapping[str, np.ndarray],
    asked: list[ColumnRequest],
    noise: QueryNoise | None,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The statistics as float64 arrays: exact, or each with its own noise from ``noise``."""
    import numpy as np

    from pygrid.privacy import mechanisms as m

    out: dict[str, np.ndarray] = {}
    for request in asked:
        values = np.asarray(columns[request.name], dtype=np.float64)
        lower, upper = request.lower, request.upper
        clipped = np.clip(values, lower, upper)
        for stat in request.stats:
            key = f"{request.name}.{stat}"
            if stat == "histogram":
                if noise is None:
                    counts, edges = m.histogram(clipped, lower, upper, request.bins)
                else:
                    counts, edges = m.noisy_histogram(
                        clipped, lower, upper, request.bins, noise, rng
                    )
                out[key], out[f"{request.name}.bin_edges"] = counts, edges
                continue
            if noise is None:
                value = {
                    "count": float(len(clipped)),
                    "sum": float(clipped.sum()),
                    "mean": float(clipped.sum()) / max(len(clipped), 1),
                }[stat]
            elif stat == "count":
                value = m.noisy_count(len(clipped), noise, rng)
            elif stat == "sum":
                value = m.noisy_sum(clipped, lower, upper, noise, rng)
            else:
                value = m.noisy_mean(clipped, lower, upper, noise, rng)
            out[key] = np.asarray(value, dtype=np.float64)
    return out


def run(job: Job) -> Result:
    """Run a ``statistics`` job: see the module docstring."""
    import numpy as np
    from safetensors.numpy import save

    columns = job.columns()
    asked = requests(job.section("statistics"), job.schema, columns)
    queries = sum(request.queries for request in asked)
    privacy = job.privacy
    noise = None if privacy is None else query_noise(privacy, queries)
    # OS-seeded: nothing in the job can predict the noise
    tensors = compute(columns, asked, noise, np.random.default_rng())
    return Result(save(tensors), {"queries": float(queries)})
