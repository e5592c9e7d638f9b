"""Server optimisers: pure functions ``(params, mean_diff, state) -> (new_params, new_state)``.

``mean_diff`` is the aggregated diff of a cycle in PyGrid's sign, ``original - trained``, so plain
FedAvg is ``params - mean_diff``. The adaptive optimisers of Reddi et al. 2021 ("Adaptive
Federated Optimization", Algorithm 2) are written in terms of the pseudo-gradient
``Delta = trained - original = -mean_diff``.

``state`` is a flat ``dict[str, Tensor]`` so that a Node can store it as safetensors between
cycles; an empty state means "first cycle". Keys are ``"<buffer>/<parameter name>"``:
``momentum/`` for FedAvgM, ``m/`` and ``v/`` for FedAdam and FedYogi. All maths runs in float64;
parameters come back in their own dtype, state in float32 (float64 for float64 parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from pygrid.aggregation.config import FedAdam, FedAvgM, FedYogi
from pygrid.aggregation.fedavg import cast_like

__all__ = ["apply_update", "fedadam_step", "fedavgm_step", "fedyogi_step"]

Tensors = dict[str, torch.Tensor]


def _f64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float64)


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    # float16/bfloat16 would underflow a second moment of small steps to zero
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def apply_update(
    params: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor], server_lr: float = 1.0
) -> Tensors:
    """``params - server_lr * update`` per tensor, computed in float64, in each parameter's dtype."""
    return {
        name: cast_like(_f64(param) - server_lr * _f64(update[name]), param)
        for name, param in params.items()
    }


def _load_state(
    state: Mapping[str, torch.Tensor] | None,
    params: Mapping[str, torch.Tensor],
    initial: Mapping[str, float],
) -> dict[str, Tensors]:
    """The float64 buffers ``initial`` names, from ``state``, or filled with their initial value."""
    if not state:
        return {
            buffer: {
                name: torch.full(tuple(param.shape), value, dtype=torch.float64)
                for name, param in params.items()
            }
            for buffer, value in initial.items()
        }
    expected = [f"{buffer}/{name}" for buffer in initial for name in params]
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"optimiser state lacks {missing[0]!r}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"optimiser state has unexpected buffer {unexpected[0]!r}")
    buffers: dict[str, Tensors] = {buffer: {} for buffer in initial}
    for buffer in initial:
        for name, param in params.items():
            value = state[f"{buffer}/{name}"]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"optimiser state {buffer}/{name!s} has shape {list(value.shape)}, "
                    f"expected {list(param.shape)}"
                )
            # a copy: the caller's state must not change under it (pure function)
            buffers[buffer][name] = value.to(torch.float64, copy=True)
    return buffers


def _dump_state(buffers: Mapping[str, Tensors], params: Mapping[str, torch.Tensor]) -> Tensors:
    return {
        f"{buffer}/{name}": values[name].to(_state_dtype(param))
        for buffer, values in buffers.items()
        for name, param in params.items()
    }


def fedavgm_step(
    params: Mapping[str, torch.Tensor],
    mean_diff: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor] | None,
    config: FedAvgM,
) -> tuple[Tensors, Tensors]:
    """FedAvgM: ``m = momentum * m + mean_diff; params -= server_lr * m`` (m starts at 0).

    With momentum 0 and server_lr 1 this is exactly FedAvg (Hsu et al. 2019, "Measuring the
    Effects of Non-Identical Data Distribution for Federated Visual Classification").
    """
    buffers = _load_state(state, params, {"momentum": 0.0})
    momentum = buffers["momentum"]
    for name in params:
        momentum[name].mul_(config.momentum).add_(_f64(mean_diff[name]))
    return apply_update(params, momentum, config.server_lr), _dump_state(buffers, params)


def _adam_second_moment(v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
    return v.mul_(beta2).add_(g2, alpha=1 - beta2)


def _yogi_second_moment(v: torch.Tensor, g2: torch.Tensor, beta2: float) -> torch.Tensor:
    return v.sub_(torch.sign(v - g2).mul_(g2), alpha=1 - beta2)


def _adaptive_step(
    params: Mapping[str, torch.Tensor],
    mean_diff: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor] | None,
    config: FedAdam | FedYogi,
    second_moment: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> tuple[Tensors, Tensors]:
    buffers = _load_state(state, params, {"m": 0.0, "v": config.tau**2})
    new_params = {}
    for name, param in params.items():
        delta = -_f64(mean_diff[name])
        m = buffers["m"][name].mul_(config.beta1).add_(delta, alpha=1 - config.beta1)
        v = second_moment(buffers["v"][name], delta.square(), config.beta2)
        step = m / (v.sqrt() + config.tau)
        new_params[name] = cast_like(_f64(param) + config.server_lr * step, param)
    return new_params, _dump_state(buffers, params)


def fedadam_step(
    params: Mapping[str, torch.Tensor],
    mean_diff: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor] | None,
    config: FedAdam,
) -> tuple[Tensors, Tensors]:
    """FedAdam (Reddi et al. 2021, Algorithm 2), with ``Delta = -mean_diff``::

        m = beta1 * m + (1 - beta1) * Delta
        v = beta2 * v + (1 - beta2) * Delta**2
        params = params + server_lr * m / (sqrt(v) + tau)

    starting from ``m = 0`` and ``v = tau**2`` (the paper asks for ``v >= tau**2``), with no bias
    correction, as in the paper.
    """
    return _adaptive_step(params, mean_diff, state, config, _adam_second_moment)


def fedyogi_step(
    params: Mapping[str, torch.Tensor],
    mean_diff: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor] | None,
    config: FedYogi,
) -> tuple[Tensors, Tensors]:
    """FedYogi (Reddi et al. 2021, Algorithm 2): FedAdam with the second moment updated as::

        v = v - (1 - beta2) * Delta**2 * sign(v - Delta**2)

    which grows or shrinks v additively, so it never jumps up by a large factor in one cycle;
    v stays positive from its start at ``tau**2``.
    """
    return _adaptive_step(params, mean_diff, state, config, _yogi_second_moment)
