"""The reference workload other FL frameworks are measured on.

scikit-learn's ``load_digits`` (shipped inside scikit-learn: nothing is downloaded), X/16.0,
shuffled with numpy seed 0; the last 297 samples are the test set, the first 1500 the training
set. Devices get an IID round-robin split after a shuffle with seed 1, or a Dirichlet(alpha)
label split. The model is an MLP 64 -> 64 (ReLU) -> 10 initialised under ``torch.manual_seed(0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRAIN_SIZE = 1500
TEST_SIZE = 297


@dataclass(frozen=True)
class Digits:
    """Training and test tensors of the reference workload."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load() -> Digits:
    """The reference split of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], y[order]
    return Digits(
        x_train=torch.from_numpy(x[:TRAIN_SIZE].copy()),
        y_train=torch.from_numpy(y[:TRAIN_SIZE].copy()),
        x_test=torch.from_numpy(x[-TEST_SIZE:].copy()),
        y_test=torch.from_numpy(y[-TEST_SIZE:].copy()),
    )


def split_iid(
    x: torch.Tensor, y: torch.Tensor, devices: int, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle with ``seed``, then deal the samples round-robin to ``devices``."""
    order = torch.from_numpy(np.random.RandomState(seed).permutation(len(x)))
    x, y = x[order], y[order]
    return [(x[k::devices], y[k::devices]) for k in range(devices)]


def split_dirichlet(
    x: torch.Tensor, y: torch.Tensor, devices: int, alpha: float, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-IID: each class is spread over devices in Dirichlet(alpha) proportions."""
    rng = np.random.RandomState(seed)
    labels = y.numpy()
    shards: list[list[int]] = [[] for _ in range(devices)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(devices, alpha))
        cuts = (np.cumsum(shares) * len(members)).astype(int)[:-1]
        for k, part in enumerate(np.split(members, cuts)):
            shards[k].extend(part.tolist())
    # A device with no data cannot train: give it one sample from the largest shard.
    for k in range(devices):
        if not shards[k]:
            donor = max(range(devices), key=lambda d: len(shards[d]))
            shards[k].append(shards[donor].pop())
    return [(x[torch.tensor(s)], y[torch.tensor(s)]) for s in shards]


def mlp() -> torch.nn.Module:
    """MLP 64 -> 64 (ReLU) -> 10 with the reference initialisation."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def accuracy(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of the reference MLP with ``params``."""
    model = mlp()
    model.load_state_dict(dict(params))
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())
