"""``train``: minibatch training of a model, DP-SGD, or a training plan run over the data.

The result holds the trained parameters and buffers by name. With a model, metrics are the last
epoch's mean training ``loss`` (and ``accuracy`` for ``cross_entropy``), computed on each batch
before its step. DP-SGD reports only ``steps``: a loss on the private rows would be a release the
privacy accounting does not cover.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pygrid import serde
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
    generator,
    load_model,
    load_params,
    load_plan,
    objective,
    require_stateless,
)

__all__ = ["dp_sgd", "run"]

OPTIMIZERS = ("sgd", "adam")


def _optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def _trainable(model: torch.jit.ScriptModule) -> list[Tensor]:
    params: list[Tensor] = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise JobError("the model has no trainable parameters")
    return params


def _finite_loss(loss: float) -> float:
    if not math.isfinite(loss):
        raise JobError(f"training diverged: the loss is {loss} (try a smaller lr)")
    return loss


def _train_model(
    model: torch.jit.ScriptModule,
    x: Tensor,
    y: Tensor,
    loss: str,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
) -> dict[str, float]:
    rows = len(x)
    criterion = objective(loss)
    rng = generator()
    model.train()
    total, hits = 0.0, 0
    for _ in range(epochs):
        total, hits = 0.0, 0
        order = torch.randperm(rows, generator=rng)
        for start in range(0, rows, batch_size):
            batch = order[start : start + batch_size]
            out = forward(model, x[batch])
            value = criterion(out, y[batch])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(batch)
            if loss == "cross_entropy":
                hits += correct(out.detach(), y[batch])
    metrics = {"loss": _finite_loss(total / rows)}
    if loss == "cross_entropy":
        metrics["accuracy"] = hits / rows
    return metrics


def dp_sgd(
    model: torch.jit.ScriptModule,
    x: Tensor,
    y: Tensor,
    loss: str,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    sample_rate: float,
    max_grad_norm: float,
    noise_multiplier: float,
    rng: torch.Generator,
) -> None:
    """DP-SGD (Abadi et al. 2016) as docs/data-centric.md specifies, updating ``model`` in place.

    Each step takes every row with probability ``sample_rate``, clips each sampled row's gradient
    to ``max_grad_norm`` (one forward per row, so nothing else can enter a row's gradient), adds
    ``N(0, (noise_multiplier * max_grad_norm)^2)`` to each coordinate of the sum, divides by the
    expected batch size ``sample_rate * rows`` and takes an ``optimizer`` step.
    """
    require_stateless(model)
    rows = len(x)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    criterion = objective(loss)
    std = noise_multiplier * max_grad_norm
    expected_batch = sample_rate * rows
    watch = StateWatch(model)
    model.train()
    for _ in range(steps):
        sampled = torch.nonzero(torch.rand(rows, generator=rng) < sample_rate).flatten()
        sums = [torch.zeros_like(p) for p in params]
        for i in sampled.tolist():
            # a copy: an in-place op in forward cannot change the rows later steps read
            value = criterion(forward(model, x[i : i + 1].clone()), y[i : i + 1])
            grads = torch.autograd.grad(value, params, allow_unused=True)
            watch.check()
            present = [g for g in grads if g is not None]
            if not present:
                continue  # this row's loss does not depend on the parameters
            norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in present])))
            if not math.isfinite(norm):
                continue  # adding nothing for this row keeps its contribution within the bound
            scale = max_grad_norm / max(norm, max_grad_norm)
            for total, grad in zip(sums, grads, strict=True):
                if grad is not None:
                    total.add_(grad, alpha=scale)
        for param, total in zip(params, sums, strict=True):
            noise = torch.randn(total.shape, generator=rng, dtype=total.dtype)
            param.grad = total.add_(noise, alpha=std).div_(expected_batch)
        optimizer.step()
        watch.reset()


def _privacy_numbers(privacy: dict[str, Any]) -> dict[str, Any]:
    where = "spec.privacy"
    numbers = {
        "steps": integer(privacy, "steps", where),
        "sample_rate": number(privacy, "sample_rate", where),
        "max_grad_norm": number(privacy, "max_grad_norm", where),
        "noise_multiplier": number(privacy, "noise_multiplier", where),
    }
    if not 0 < numbers["sample_rate"] <= 1:
        raise JobError(f"{where}.sample_rate must be in (0, 1]")
    if numbers["max_grad_norm"] <= 0 or numbers["noise_multiplier"] <= 0:
        raise JobError(f"{where}.max_grad_norm and noise_multiplier must be positive")
    return numbers


def _train_plan(job: Job, x: Tensor, y: Tensor, settings: dict[str, Any]) -> Result:
    plan_path = job.file("plan.pt")
    assert plan_path is not None
    plan = load_plan(plan_path, "training")
    params = load_params(job.file("params.safetensors"))
    names = list(params)
    values = list(params.values())
    specs = [(v.shape, v.dtype) for v in values]
    rows, batch_size, lr = len(x), settings["batch_size"], settings["lr"]
    rng = generator()
    total = accuracy = 0.0
    for _ in range(settings["epochs"]):
        total = accuracy = 0.0
        order = torch.randperm(rows, generator=rng)
        for start in range(0, rows, batch_size):
            batch = order[start : start + batch_size]
            value, hits, values = plan(x[batch], y[batch], lr, values)
            if [(v.shape, v.dtype) for v in values] != specs:
                raise JobError("the plan returned parameters of other shapes or dtypes")
            total += float(value.detach()) * len(batch)
            accuracy += float(hits) * len(batch)
    metrics = {"loss": _finite_loss(total / rows)}
    if settings["loss"] == "cross_entropy":
        metrics["accuracy"] = accuracy / rows
    return Result(serde.dump(dict(zip(names, values, strict=True))), metrics)


def run(job: Job) -> Result:
    """Run a ``train`` job: see the module docstring."""
    section = job.section("train")
    where = "spec.train"
    settings: dict[str, Any] = {
        "loss": loss_name(section, where),
        "optimizer": section.get("optimizer", "sgd"),
        "epochs": integer(section, "epochs", where, 1),
        # defaults as the Node's TrainSpec has them (the Node stores them resolved anyway)
        "batch_size": integer(section, "batch_size", where, 32),
        "lr": number(section, "lr", where, 0.1),
    }
    if settings["optimizer"] not in OPTIMIZERS:
        raise JobError(f"{where}.optimizer must be one of: " + ", ".join(OPTIMIZERS))
    model_path, plan_path = job.file("model.pt"), job.file("plan.pt")
    if (model_path is None) == (plan_path is None):
        raise JobError("a train job needs either model.pt or plan.pt (with params), not both")
    privacy = job.privacy
    if privacy is not None and model_path is None:
        raise JobError("DP-SGD needs a model, not a plan")
    if plan_path is not None and settings["optimizer"] != "sgd":
        raise JobError("a plan takes its own SGD step: spec.train.optimizer must be sgd")

    columns = job.columns()
    names, target_name = job.column_names(columns)
    x = torch.from_numpy(features(columns, names))
    y = torch.from_numpy(target(columns, target_name, settings["loss"]))
    if plan_path is not None:
        return _train_plan(job, x, y, settings)

    assert model_path is not None
    model = load_model(model_path)
    optimizer = _optimizer(settings["optimizer"], _trainable(model), settings["lr"])
    if privacy is None:
        metrics = _train_model(
            model, x, y, settings["loss"], optimizer, settings["epochs"], settings["batch_size"]
        )
    else:
        numbers = _privacy_numbers(privacy)
        dp_sgd(model, x, y, settings["loss"], optimizer, rng=generator(), **numbers)
        metrics = {"steps": float(numbers["steps"])}
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise JobError(f"training diverged: {name} is not finite (try a smaller lr)")
    return Result(serde.dump(model.state_dict()), metrics)
