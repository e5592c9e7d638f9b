"""What the torch job kinds share: loading submitted code, data as tensors, losses, DP checks.

Every TorchScript file is validated again here with `pygrid.plans.load_plan` (the Node checked
it at submission; a Worker trusts no one's word for it). A ``model.pt`` is a plain module,
``forward(x) -> output``, so it is loaded with no plan kind.

Differential privacy reasons about one row at a time: a row's gradient, or whether a row is
classified correctly, must depend on that row only. The DP paths therefore run the model on one
row per call, and first refuse models that could carry anything from one call to the next:
assignments to module attributes (``prim::SetAttr``) and mutable containers held as attributes
(a list a ``forward`` could append rows to). Tensors held as attributes (parameters, buffers) can
still be changed in place; `StateWatch` notices that through their version counters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pygrid import plans, serde
from pygrid.apps.worker.jobs import JobError
from pygrid.plans import PlanKind

__all__ = [
    "StateWatch",
    "generator",
    "load_model",
    "load_params",
    "load_plan",
    "objective",
    "stateless_problem",
]

Objective = Callable[[Tensor, Tensor], Tensor]


def _read_code(path: Path, kind: PlanKind | None) -> torch.jit.ScriptModule:
    data = path.read_bytes()
    try:
        # the Node enforced the size limit at submission: here the limit is the file itself
        return plans.load_plan(data, max_bytes=max(len(data), 1), kind=kind)
    except plans.PlanError as exc:
        raise JobError(f"{path.name}: {exc}") from None


def load_model(path: Path) -> torch.jit.ScriptModule:
    """A validated ``model.pt``: a TorchScript module with ``forward(x: Tensor) -> Tensor``."""
    model = _read_code(path, None)
    schema = model._c._get_method("forward").schema if model._c._has_method("forward") else None
    if schema is None or [str(a.type) for a in schema.arguments[1:]] != ["Tensor"]:
        raise JobError(f"{path.name}: forward must take one tensor, forward(x) -> output")
    if [str(r.type) for r in schema.returns] != ["Tensor"]:
        raise JobError(f"{path.name}: forward must return one tensor, forward(x) -> output")
    return model


def load_plan(path: Path, kind: PlanKind) -> torch.jit.ScriptModule:
    """A validated ``plan.pt`` that follows the ``kind`` plan contract (see `pygrid.plans`)."""
    return _read_code(path, kind)


def load_params(path: Path | None) -> dict[str, Tensor]:
    """``params.safetensors``, in the order `pygrid.serde.dump` kept (a plan's params order)."""
    if path is None:
        raise JobError("a plan needs its params: params.safetensors is missing")
    try:
        return serde.load_file_checked(path, max_bytes=max(path.stat().st_size, 1))
    except serde.TensorPayloadError as exc:
        raise JobError(f"{path.name}: {exc}") from None


def generator() -> torch.Generator:
    """A private generator seeded by the OS: no job code can read or set its seed."""
    rng = torch.Generator()
    rng.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return rng


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() != 2 or out.shape[0] != y.shape[0]:
        raise JobError(
            f"cross_entropy needs model outputs of shape [batch, classes]; a batch of "
            f"{y.shape[0]} gave {list(out.shape)}"
        )
    return F.cross_entropy(out, y)


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if y.shape != out.shape:
        # F.mse_loss would broadcast [N, 1] against [N] into [N, N]: match shapes explicitly
        if y.numel() != out.numel():
            raise JobError(
                f"mse: the model's output has shape {list(out.shape)} for a batch whose "
                f"target has shape {list(y.shape)}"
            )
        y = y.reshape(out.shape)
    return F.mse_loss(out, y.to(out.dtype))


def objective(loss: str) -> Objective:
    """The mean loss of a batch: ``cross_entropy`` or ``mse``."""
    return _cross_entropy if loss == "cross_entropy" else _mse


def forward(model: torch.jit.ScriptModule, x: Tensor) -> Tensor:
    """``model(x)``, checked to be a floating-point tensor."""
    out = model(x)
    if not isinstance(out, Tensor) or not out.is_floating_point():
        raise JobError("the model's forward must return a floating-point tensor")
    return out


def correct(out: Tensor, y: Tensor) -> int:
    """How many rows' argmax is their class."""
    return int((out.argmax(dim=1) == y).sum())


def _graphs(model: torch.jit.ScriptModule) -> Iterator[tuple[str, Any]]:
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for name in module._c._method_names():
            yield prefix + name, module._c._get_method(name).graph
        for hook in [*module._c._get_forward_pre_hooks(), *module._c._get_forward_hooks()]:
            yield f"{prefix}<hook {hook.name}>", hook.graph


def _nodes(graph: Any) -> Iterator[Any]:
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    pending = [graph.block()]
    while pending:
        for node in pending.pop().nodes():
            yield node
            pending.extend(node.blocks())


def _mutable(type_: Any) -> bool:
    if type_.kind() in ("ListType", "DictType", "AnyType", "AnyListType", "AnyClassType"):
        return True
    return any(_mutable(contained) for contained in type_.containedTypes())


def stateless_problem(model: torch.jit.ScriptModule) -> str | None:
    """Why ``model`` could carry data from one call to the next (apart from tensors), or None."""
    for method, graph in _graphs(model):
        for node in _nodes(graph):
            if node.kind() == "prim::SetAttr":
                return f"{method} assigns the attribute {node.s('name')!r}"
            if node.kind() == "prim::GetAttr" and _mutable(node.output().type()):
                return (
                    f"{method} uses the attribute {node.s('name')!r}, a mutable "
                    f"{node.output().type()}"
                )
    return None


def require_stateless(model: torch.jit.ScriptModule) -> None:
    """JobError unless ``model`` keeps no state between calls (see the module docstring)."""
    problem = stateless_problem(model)
    if problem:
        raise JobError(
            "differential privacy needs a model that keeps nothing from one row to the next: "
            + problem
        )


class StateWatch:
    """Notices in-place changes to a model's tensors (parameters, buffers, tensor attributes)."""

    def __init__(self, model: torch.jit.ScriptModule) -> None:
        tensors: dict[int, Tensor] = {}
        for _, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensors[id(tensor)] = tensor
        # tensor attributes that are neither parameters nor buffers, by every name forward reads
        names = {
            node.s("name")
            for _, graph in _graphs(model)
            for node in _nodes(graph)
            if node.kind() == "prim::GetAttr"
        }
        for _, module in model.named_modules():
            for name in names:
                if module._c.hasattr(name):
                    value = module._c.getattr(name)
                    if isinstance(value, Tensor):
                        tensors[id(value)] = value
        self._tensors = list(tensors.values())
        self._versions = self._now()

    def _now(self) -> list[int]:
        return [tensor._version for tensor in self._tensors]

    def reset(self) -> None:
        """Accept the current state (after the job itself updated the parameters)."""
        self._versions = self._now()

    def check(self) -> None:
        """JobError if the model changed one of its tensors in place since the last `reset`."""
        if self._now() != self._versions:
            raise JobError(
                "differential privacy needs a model that keeps nothing from one row to the "
                "next: its forward changed a parameter, buffer or tensor attribute in place"
            )
