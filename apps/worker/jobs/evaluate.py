"""``evaluate``: a model's or an evaluate plan's loss and accuracy on the private rows.

Metrics: ``loss`` (mean over rows), ``accuracy`` (``cross_entropy`` only) and ``rows``; the result
payload holds no tensors. With privacy, only ``accuracy`` (the count of correctly classified rows
plus Laplace noise of scale ``1 / epsilon``, over the public row count, clipped to [0, 1]) and
``rows`` are returned. That needs a model (run one row per call, see ``models``): a plan keeps
state between calls by design, so one row could change how others are classified.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pygrid.apps.worker.jobs import (
    Job,
    JobError,
    Result,
    features,
    integer,
    loss_name,
    number,
    target,
)
from pygrid.apps.worker.jobs.models import (
    StateWatch,
    correct,
    forward,
    load_model,
    load_params,
    load_plan,
    objective,
    require_stateless,
)

__all__ = ["EVAL_BATCH", "run"]

#: Rows per forward pass without privacy unless spec.evaluate.batch_size says otherwise. It
#: matters to a plan that normalises with batch statistics, otherwise only to memory.
EVAL_BATCH = 1024


def _empty() -> bytes:
    from safetensors.numpy import save

    return save({})


def _evaluate_model(
    model: torch.jit.ScriptModule, x: Tensor, y: Tensor, loss: str, batch: int
) -> dict[str, float]:
    criterion = objective(loss)
    total, hits = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            out = forward(model, xb)
            total += float(criterion(out, yb)) * len(xb)
            if loss == "cross_entropy":
                hits += correct(out, yb)
    metrics = {"loss": total / len(x), "rows": float(len(x))}
    if loss == "cross_entropy":
        metrics["accuracy"] = hits / len(x)
    return metrics


def _evaluate_plan(job: Job, x: Tensor, y: Tensor, loss: str, batch: int) -> dict[str, float]:
    plan_path = job.file("plan.pt")
    assert plan_path is not None
    plan = load_plan(plan_path, "evaluate")
    values = list(load_params(job.file("params.safetensors")).values())
    total = accuracy = 0.0
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        value, hits = plan(xb, yb, values)
        total += float(value) * len(xb)
        accuracy += float(hits) * len(xb)
    metrics = {"loss": total / len(x), "rows": float(len(x))}
    if loss == "cross_entropy":
        metrics["accuracy"] = accuracy / len(x)
    return metrics


def _private_accuracy(
    model: torch.jit.ScriptModule, x: Tensor, y: Tensor, privacy: dict[str, Any]
) -> dict[str, float]:
    import numpy as np

    from pygrid.privacy.mechanisms import QueryNoise, noisy_count

    epsilon = number(privacy, "epsilon", "spec.privacy")
    mechanism = privacy.get("mechanism", "laplace")
    if mechanism != "laplace":
        raise JobError(
            "a private evaluation adds Laplace noise: spec.privacy.mechanism must be laplace"
        )
    if epsilon <= 0:
        raise JobError("spec.privacy.epsilon must be positive")
    require_stateless(model)
    watch = StateWatch(model)
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(len(x)):
            # a copy: an in-place op in forward cannot change the rows read after it
            hits += correct(forward(model, x[i : i + 1].clone()), y[i : i + 1])
            watch.check()
    noisy = noisy_count(hits, QueryNoise("laplace", epsilon), np.random.default_rng())
    # the row count is public (the dataset's schema publishes it)
    return {"accuracy": min(1.0, max(0.0, noisy / len(x))), "rows": float(len(x))}


def run(job: Job) -> Result:
    """Run an ``evaluate`` job: see the module docstring."""
    section = job.section("evaluate")
    loss = loss_name(section, "spec.evaluate")
    batch = integer(section, "batch_size", "spec.evaluate", EVAL_BATCH)
    model_path, plan_path = job.file("model.pt"), job.file("plan.pt")
    if (model_path is None) == (plan_path is None):
        raise JobError("an evaluate job needs either model.pt or plan.pt (with params), not both")
    privacy = job.privacy
    if privacy is not None:
        if model_path is None:
            raise JobError("a private evaluation needs a model, not a plan")
        if loss != "cross_entropy":
            raise JobError("a private evaluation returns a noisy accuracy: it needs cross_entropy")

    columns = job.columns()
    names, target_name = job.column_names(columns)
    x = torch.from_numpy(features(columns, names))
    y = torch.from_numpy(target(columns, target_name, loss))
    if plan_path is not None:
        return Result(_empty(), _evaluate_plan(job, x, y, loss, batch))
    assert model_path is not None
    model = load_model(model_path)
    if privacy is not None:
        return Result(_empty(), _private_accuracy(model, x, y, privacy))
    return Result(_empty(), _evaluate_model(model, x, y, loss, batch))
