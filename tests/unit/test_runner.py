"""The Worker's job runner, in process: each kind on the digits workload, DP included, and refusals.

A job directory is written the way the Worker writes it (``job.json``, ``data.safetensors``,
``model.pt`` or ``plan.pt`` + ``params.safetensors``); the runner's ``main`` runs it. The sandbox
around it is tested in tests/integration/test_sandbox.py.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_file as load_torch
from torch import Tensor, nn

from pygrid import plans, serde
from pygrid.apps.worker import runner
from pygrid.apps.worker.jobs import statistics
from pygrid.apps.worker.jobs.models import stateless_problem
from pygrid.privacy import dpsgd, gaussian_sigma
from pygrid.workloads import digits

#: DP-SGD on digits that reaches >= 0.80 test accuracy at epsilon 3 (about 0.92 in practice).
#: The end-to-end test reuses these.
DP_HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 256,
    "lr": 2.0,
    "optimizer": "sgd",
    "loss": "cross_entropy",
    "max_grad_norm": 1.0,
    "epsilon": 3.0,
    "delta": 1e-5,
}

#: Plain training on digits that reaches >= 0.93 test accuracy (about 0.97).
TRAIN_HYPERPARAMETERS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.01,
    "optimizer": "adam",
    "loss": "cross_entropy",
}

DIGITS_SCHEMA = {
    "rows": 1500,
    "target": "y",
    "source_format": "npz",
    "columns": [
        {
            "name": "x",
            "dtype": "float32",
            "shape": [64],
            "min": 0.0,
            "max": 1.0,
            "categories": None,
        },
        {"name": "y", "dtype": "int64", "shape": [], "min": 0, "max": 9, "categories": None},
    ],
}


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in the sandbox (OMP_NUM_THREADS=1): small ops on a busy machine
    are many times slower with threads that spin waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def script(module: nn.Module) -> torch.jit.ScriptModule:
    scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def write_job(
    job_dir: Path,
    kind: str,
    spec: dict[str, Any],
    columns: dict[str, np.ndarray],
    schema: dict[str, Any],
    *,
    model: nn.Module | None = None,
    plan: torch.jit.ScriptModule | None = None,
    params: dict[str, Tensor] | None = None,
) -> Path:
    """A job directory as the Worker writes it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    save_file(columns, str(job_dir / "data.safetensors"))
    job = {"job_id": 7, "kind": kind, "spec": spec, "schema": schema}
    (job_dir / "job.json").write_text(json.dumps(job))
    if model is not None:
        torch.jit.save(script(model), str(job_dir / "model.pt"))
    if plan is not None:
        (job_dir / "plan.pt").write_bytes(plans.save_plan(plan))
    if params is not None:
        (job_dir / "params.safetensors").write_bytes(serde.dump(params))
    return job_dir


def digits_job(
    tmp_path: Path, data: digits.Digits, kind: str, spec: dict[str, Any], **files: Any
) -> Path:
    columns = {"x": data.x_train.numpy(), "y": data.y_train.numpy()}
    full = {"dataset_id": 1, "kind": kind, "features": ["x"], "target": "y", **spec}
    return write_job(tmp_path / "job", kind, full, columns, DIGITS_SCHEMA, **files)


def run_ok(job_dir: Path) -> dict[str, float]:
    assert runner.main([str(job_dir)]) == 0
    written = json.loads((job_dir / "result.json").read_text())
    assert written == {"metrics": written["metrics"]}
    return dict(written["metrics"])


def run_failing(job_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The runner's exit code is 1; returns the last line of its stderr."""
    assert runner.main([str(job_dir)]) == 1
    assert not (job_dir / "result.json").exists()
    return capsys.readouterr().err.strip().splitlines()[-1]


@functools.lru_cache
def noise_multiplier(epsilon: float, delta: float, rate: float, steps: int) -> float:
    return dpsgd.noise_multiplier(epsilon, delta, rate, steps)  # about a second: once per test run


def private_spec(hyper: dict[str, Any], rows: int) -> dict[str, Any]:
    """The spec the Node stores for DP training: privacy resolved with the accountant."""
    rate = dpsgd.sample_rate(hyper["batch_size"], rows)
    steps = dpsgd.steps(hyper["epochs"], hyper["batch_size"], rows)
    return {
        "train": {k: hyper[k] for k in ("epochs", "batch_size", "lr", "optimizer", "loss")},
        "privacy": {
            "epsilon": hyper["epsilon"],
            "delta": hyper["delta"],
            "max_grad_norm": hyper["max_grad_norm"],
            "noise_multiplier": noise_multiplier(hyper["epsilon"], hyper["delta"], rate, steps),
            "sample_rate": rate,
            "steps": steps,
        },
    }


class Remembers(nn.Module):
    """Keeps every batch it saw: a model that could mix rows (refused with privacy)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.seen = [torch.zeros(1)]  # non-empty, so TorchScript infers List[Tensor]

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x)
        return self.linear(x)


class Counts(nn.Module):
    """Assigns an attribute on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x)


class StashesInBuffer(nn.Module):
    """Copies a row into a buffer: a leak the version counters catch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.register_buffer("stash", torch.zeros(64))

    def forward(self, x: Tensor) -> Tensor:
        getattr(self, "stash").copy_(x[0])  # noqa: B009 (mypy sees self.stash as Tensor | Module)
        return self.linear(x)


class Prints(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        print(x)
        return x


class SeedingPlan(nn.Module):
    """Follows the training-plan signature but reseeds the generator."""

    def forward(
        self, x: Tensor, y: Tensor, lr: float, params: list[Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        torch.manual_seed(0)
        return x.sum(), y.sum(), params


# --- train -----------------------------------------------------------------------------------


def test_training_a_model_reaches_the_reference_accuracy(
    tmp_path: Path, data: digits.Digits
) -> None:
    # Prepare
    job_dir = digits_job(
        tmp_path, data, "train", {"train": TRAIN_HYPERPARAMETERS}, model=digits.mlp()
    )

    # Execute
    metrics = run_ok(job_dir)

    # Assert: the result holds the trained weights by name; they generalise
    trained = serde.load((job_dir / "result.safetensors").read_bytes(), max_bytes=2**24)
    assert list(trained) == list(digits.mlp().state_dict())
    assert set(metrics) == {"loss", "accuracy"}
    assert metrics["accuracy"] > 0.9
    assert digits.accuracy(trained, data.x_test, data.y_test) >= 0.93


@pytest.mark.slow
def test_dp_sgd_reaches_080_at_epsilon_3_and_reports_only_steps(
    tmp_path: Path, data: digits.Digits
) -> None:
    # Prepare
    spec = private_spec(DP_HYPERPARAMETERS, rows=len(data.x_train))
    job_dir = digits_job(tmp_path, data, "train", spec, model=digits.mlp())

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    assert metrics == {"steps": float(spec["privacy"]["steps"])}
    trained = load_torch(str(job_dir / "result.safetensors"))
    assert digits.accuracy(trained, data.x_test, data.y_test) >= 0.80
    assert (
        dpsgd.epsilon(spec["privacy"]["noise_multiplier"], spec["privacy"]["sample_rate"], 60, 1e-5)
        <= 3.0
    )


def test_dp_sgd_noise_has_std_noise_multiplier_times_clip_over_the_expected_batch() -> None:
    # Prepare: mse of w * x against 0 has gradient 2 * w * x^2, zero at w = 0, so a step taken
    # from w = 0 is the noise alone: N(0, (1.5 * 2.0)^2) over the expected batch of 3 rows
    from pygrid.apps.worker.jobs.train import dp_sgd

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: Tensor) -> Tensor:
            return self.w * x

    model = script(Scale())
    optimizer = torch.optim.SGD(list(model.parameters()), lr=1.0)
    x, y = torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(3, 1)
    rng = torch.Generator()
    rng.manual_seed(0)

    # Execute
    steps = []
    for _ in range(400):
        with torch.no_grad():
            model.w.zero_()
        dp_sgd(
            model, x, y, "mse", optimizer, steps=1, sample_rate=1.0, max_grad_norm=2.0,
            noise_multiplier=1.5, rng=rng,
        )  # fmt: skip
        steps.append(float(model.w.detach()))

    # Assert
    assert np.mean(steps) == pytest.approx(0.0, abs=0.2)
    assert np.std(steps) == pytest.approx(1.5 * 2.0 / 3, rel=0.15)


def test_dp_sgd_clips_per_row_gradients_to_max_grad_norm() -> None:
    # Prepare: at w = 0 a row's cross-entropy gradient is -x / 2: -50, -0.25 and 1.5
    from pygrid.apps.worker.jobs.train import dp_sgd

    class Linear1(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: Tensor) -> Tensor:
            # cross_entropy over [w*x, 0]: gradient in w is x * (softmax_0 - 1) = -x / 2 at w = 0
            return torch.stack([self.w * x[:, 0], torch.zeros_like(x[:, 0])], dim=1)

    model = script(Linear1())
    optimizer = torch.optim.SGD(list(model.parameters()), lr=1.0)
    x = torch.tensor([[100.0], [0.5], [-3.0]])

    # Execute: no noise, every row sampled
    dp_sgd(
        model, x, torch.zeros(3, dtype=torch.int64), "cross_entropy", optimizer, steps=1,
        sample_rate=1.0, max_grad_norm=1.0, noise_multiplier=1e-12, rng=torch.Generator(),
    )  # fmt: skip

    # Assert: grads -50, -0.25, 1.5 clip to -1, -0.25, 1; their sum over 3 rows, one SGD step
    assert float(model.w.detach()) == pytest.approx(-(-1.0 - 0.25 + 1.0) / 3, abs=1e-6)


@pytest.mark.parametrize("model", [Remembers, Counts, StashesInBuffer], ids=lambda m: m.__name__)
def test_dp_sgd_refuses_a_model_that_keeps_state_between_rows(
    tmp_path: Path, data: digits.Digits, capsys: pytest.CaptureFixture[str], model: type
) -> None:
    spec = private_spec({**DP_HYPERPARAMETERS, "epochs": 1}, rows=len(data.x_train))
    job_dir = digits_job(tmp_path, data, "train", spec, model=model())

    reason = run_failing(job_dir, capsys)

    assert "keeps nothing from one row to the next" in reason


def test_stateless_models_pass_the_state_check() -> None:
    assert stateless_problem(script(digits.mlp())) is None
    assert "seen" in (stateless_problem(script(Remembers())) or "")
    assert "calls" in (stateless_problem(script(Counts())) or "")


def test_training_with_mse_matches_the_target_to_the_output_shape(tmp_path: Path) -> None:
    # Prepare: y = 2a - b + 1, a 1-D target for a model with output [N, 1]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500).astype(np.float32), rng.normal(size=500).astype(np.float32)
    columns = {"a": a, "b": b, "y": 2 * a - b + 1}
    spec = {
        "features": ["a", "b"],
        "target": "y",
        "train": {"epochs": 30, "batch_size": 50, "lr": 0.1, "loss": "mse", "optimizer": "sgd"},
    }
    torch.manual_seed(0)
    job_dir = write_job(tmp_path, "train", spec, columns, {}, model=nn.Linear(2, 1))

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    trained = load_torch(str(job_dir / "result.safetensors"))
    assert set(metrics) == {"loss"}
    assert metrics["loss"] < 1e-3
    torch.testing.assert_close(trained["weight"], torch.tensor([[2.0, -1.0]]), atol=0.02, rtol=0)
    torch.testing.assert_close(trained["bias"], torch.tensor([1.0]), atol=0.02, rtol=0)


def test_a_training_plan_runs_over_shuffled_batches(tmp_path: Path, data: digits.Digits) -> None:
    # Prepare
    model = digits.mlp()
    params = dict(model.named_parameters())
    spec = {"train": {"epochs": 10, "batch_size": 64, "lr": 0.5, "loss": "cross_entropy"}}
    job_dir = digits_job(
        tmp_path, data, "train", spec, plan=plans.training_plan(model), params=params
    )

    # Execute
    metrics = run_ok(job_dir)

    # Assert: parameters by name, in the plan's order
    trained = serde.load((job_dir / "result.safetensors").read_bytes(), max_bytes=2**24)
    assert list(trained) == list(params)
    assert set(metrics) == {"loss", "accuracy"}
    assert digits.accuracy(trained, data.x_test, data.y_test) >= 0.90  # about 0.97


def test_dp_sgd_with_a_plan_is_refused(
    tmp_path: Path, data: digits.Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    model = digits.mlp()
    spec = private_spec(DP_HYPERPARAMETERS, rows=len(data.x_train))
    job_dir = digits_job(
        tmp_path,
        data,
        "train",
        spec,
        plan=plans.training_plan(model),
        params=dict(model.named_parameters()),
    )

    assert run_failing(job_dir, capsys) == "DP-SGD needs a model, not a plan"


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluating_a_model_gives_loss_accuracy_and_rows(
    tmp_path: Path, data: digits.Digits
) -> None:
    # Prepare
    model = digits.mlp()
    job_dir = digits_job(
        tmp_path, data, "evaluate", {"evaluate": {"loss": "cross_entropy"}}, model=model
    )

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    with torch.no_grad():
        out = model(data.x_train)
    assert metrics["rows"] == 1500
    assert metrics["loss"] == pytest.approx(
        float(nn.functional.cross_entropy(out, data.y_train)), rel=1e-5
    )
    assert metrics["accuracy"] == pytest.approx(
        float((out.argmax(1) == data.y_train).float().mean())
    )
    assert load_file(str(job_dir / "result.safetensors")) == {}


def test_evaluating_a_plan_matches_the_model(tmp_path: Path, data: digits.Digits) -> None:
    # Prepare
    model = digits.mlp()
    job_dir = digits_job(
        tmp_path, data, "evaluate", {"evaluate": {"loss": "cross_entropy"}},
        plan=plans.evaluate_plan(model), params=dict(model.named_parameters()),
    )  # fmt: skip

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    with torch.no_grad():
        out = model(data.x_train)
    assert metrics["loss"] == pytest.approx(
        float(nn.functional.cross_entropy(out, data.y_train)), rel=1e-5
    )
    assert metrics["accuracy"] == pytest.approx(
        float((out.argmax(1) == data.y_train).float().mean())
    )


def test_a_private_evaluation_returns_only_a_noisy_accuracy(
    tmp_path: Path, data: digits.Digits
) -> None:
    # Prepare: epsilon 5 over 1500 rows: the Laplace noise on the accuracy has scale 1/7500
    model = digits.mlp()
    spec = {"evaluate": {"loss": "cross_entropy"}, "privacy": {"epsilon": 5.0}}
    job_dir = digits_job(tmp_path, data, "evaluate", spec, model=model)

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    with torch.no_grad():
        exact = float((model(data.x_train).argmax(1) == data.y_train).float().mean())
    assert set(metrics) == {"accuracy", "rows"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(exact, abs=0.01)
    assert metrics["accuracy"] != exact  # noise was added


@pytest.mark.parametrize(
    ("privacy", "files", "reason"),
    [
        ({"epsilon": 1.0}, "plan", "a private evaluation needs a model, not a plan"),
        ({"epsilon": 1.0, "mechanism": "gaussian"}, "model", "must be laplace"),
        ({"epsilon": 1.0}, "remembers", "keeps nothing from one row to the next"),
    ],
)
def test_a_private_evaluation_refuses_what_it_cannot_bound(
    tmp_path: Path,
    data: digits.Digits,
    capsys: pytest.CaptureFixture[str],
    privacy: dict[str, Any],
    files: str,
    reason: str,
) -> None:
    model = digits.mlp()
    given: dict[str, Any] = {
        "plan": {"plan": plans.evaluate_plan(model), "params": dict(model.named_parameters())},
        "model": {"model": model},
        "remembers": {"model": Remembers()},
    }[files]
    spec = {"evaluate": {"loss": "cross_entropy"}, "privacy": privacy}
    job_dir = digits_job(tmp_path, data, "evaluate", spec, **given)

    assert reason in run_failing(job_dir, capsys)


# --- statistics -------------------------------------------------------------------------------


PEOPLE_SCHEMA = {
    "rows": 6,
    "target": None,
    "columns": [
        {
            "name": "age",
            "dtype": "float32",
            "shape": [],
            "min": 0.0,
            "max": 100.0,
            "categories": None,
        },
        {"name": "visits", "dtype": "int64", "shape": [], "min": 0, "max": 10, "categories": None},
        {
            "name": "scan",
            "dtype": "float32",
            "shape": [2],
            "min": 0.0,
            "max": 1.0,
            "categories": None,
        },
    ],
}


def people() -> dict[str, np.ndarray]:
    return {
        "age": np.array([23.0, 35.5, 41.0, 67.0, 120.0, 8.0], dtype=np.float32),
        "visits": np.array([0, 3, 10, 2, 2, 7], dtype=np.int64),
        "scan": np.zeros((6, 2), dtype=np.float32),
    }


def test_statistics_without_privacy_are_exact(tmp_path: Path) -> None:
    # Prepare: age uses its own bounds (120 is clipped to 90), visits the schema's
    spec = {
        "statistics": {
            "columns": [
                {
                    "name": "age",
                    "stats": ["count", "sum", "mean", "histogram"],
                    "lower": 0,
                    "upper": 90,
                    "bins": 3,
                },
                {"name": "visits", "stats": ["sum", "histogram"]},
            ]
        }
    }
    job_dir = write_job(tmp_path, "statistics", spec, people(), PEOPLE_SCHEMA)

    # Execute
    metrics = run_ok(job_dir)

    # Assert
    result = load_file(str(job_dir / "result.safetensors"))
    age = np.clip(people()["age"].astype(np.float64), 0, 90)
    counts, edges = np.histogram(age, bins=3, range=(0, 90))
    assert metrics == {"queries": 7.0}
    assert result["age.count"] == 6.0
    assert result["age.sum"] == pytest.approx(age.sum())
    assert result["age.mean"] == pytest.approx(age.mean())
    np.testing.assert_array_equal(result["age.histogram"], counts)
    np.testing.assert_array_equal(result["age.bin_edges"], edges)
    assert result["visits.sum"] == 24.0
    np.testing.assert_array_equal(
        result["visits.histogram"], np.histogram(people()["visits"], bins=10, range=(0, 10))[0]
    )
    assert all(array.dtype == np.float64 for array in result.values())
    assert result["age.sum"].shape == ()


@pytest.mark.parametrize(("mechanism", "delta"), [("laplace", None), ("gaussian", 1e-5)])
def test_private_statistics_split_the_budget_and_have_the_calibrated_noise(
    mechanism: str, delta: float | None
) -> None:
    # Prepare: count + sum + mean(2) + histogram = 5 releases of epsilon 2 / 5 each
    section = {"columns": [{"name": "age", "stats": ["count", "sum", "mean", "histogram"]}]}
    asked = statistics.requests(section, PEOPLE_SCHEMA, people())
    privacy = {"epsilon": 2.0, "delta": delta, "mechanism": mechanism}
    rng = np.random.default_rng(1)

    # Execute
    noise = statistics.query_noise(privacy, sum(r.queries for r in asked))
    runs = [statistics.compute(people(), asked, noise, rng) for _ in range(3000)]

    # Assert: the shares add back up to exactly the job's budget
    assert noise.epsilon * 5 == pytest.approx(2.0)
    assert noise.delta is None if delta is None else noise.delta * 5 == pytest.approx(delta)
    if mechanism == "laplace":
        count_std, sum_std = math.sqrt(2) * 5 / 2.0, math.sqrt(2) * 100 * 5 / 2.0
    else:
        count_std = gaussian_sigma(1.0, 0.4, 1e-5 / 5)
        sum_std = gaussian_sigma(100.0, 0.4, 1e-5 / 5)
    counts = np.array([run["age.count"] for run in runs])
    sums = np.array([run["age.sum"] for run in runs])
    bins = np.stack([run["age.histogram"] for run in runs])
    age = np.clip(people()["age"].astype(np.float64), 0, 100)
    assert counts.std() == pytest.approx(count_std, rel=0.1)
    assert sums.std() == pytest.approx(sum_std, rel=0.1)
    assert sums.mean() == pytest.approx(age.sum(), abs=4 * sum_std / math.sqrt(3000))
    np.testing.assert_allclose(bins.std(axis=0), count_std, rtol=0.1)


def test_a_private_statistics_job_writes_noisy_float64_results(tmp_path: Path) -> None:
    spec = {
        "statistics": {"columns": [{"name": "visits", "stats": ["mean"]}]},
        "privacy": {"epsilon": 1.0, "mechanism": "laplace"},
    }
    job_dir = write_job(tmp_path, "statistics", spec, people(), PEOPLE_SCHEMA)

    metrics = run_ok(job_dir)

    result = load_file(str(job_dir / "result.safetensors"))
    assert metrics == {"queries": 2.0}
    assert set(result) == {"visits.mean"}
    assert result["visits.mean"].dtype == np.float64
    assert math.isfinite(float(result["visits.mean"]))


def test_a_statistics_job_never_imports_torch(tmp_path: Path) -> None:
    # Prepare: the gaussian mechanism, so dp_accounting is imported too
    spec = {
        "statistics": {"columns": [{"name": "age"}]},
        "privacy": {"epsilon": 1.0, "delta": 1e-6, "mechanism": "gaussian"},
    }
    job_dir = write_job(tmp_path, "statistics", spec, people(), PEOPLE_SCHEMA)

    # Execute
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pygrid.apps.worker.runner", str(job_dir)],
        capture_output=True,
        text=True,
        check=False,
    )

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "dp_accounting" in imported
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]


# --- refusals: the reason is the last line of stderr -----------------------------------------


def test_a_model_with_a_refused_operator_fails_naming_it(
    tmp_path: Path, data: digits.Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    job_dir = digits_job(tmp_path, data, "evaluate", {"evaluate": {}}, model=Prints())

    reason = run_failing(job_dir, capsys)

    assert reason.startswith("model.pt: plan uses refused operator(s): prim::Print")


def test_a_plan_with_a_refused_operator_fails_naming_it(
    tmp_path: Path, data: digits.Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    job_dir = digits_job(
        tmp_path, data, "train", {"train": {}}, plan=script(SeedingPlan()),
        params=dict(digits.mlp().named_parameters()),
    )  # fmt: skip

    reason = run_failing(job_dir, capsys)

    assert "aten::manual_seed (sets the random seed" in reason
    assert reason.startswith("plan.pt: ")


BAD_JOBS: list[tuple[str, str, dict[str, Any], str]] = [
    ("no model", "train", {"train": {}}, "needs either model.pt or plan.pt"),
    ("unknown column", "evaluate", {"features": ["nope"]}, "column 'nope' is not in the dataset"),
    ("bad optimizer", "train", {"train": {"optimizer": "rmsprop"}}, "optimizer must be one of"),
    ("bad loss", "evaluate", {"evaluate": {"loss": "hinge"}}, "loss must be one of"),
    ("2-D target", "evaluate", {"features": ["y"], "target": "x"}, "cross_entropy needs a target"),
    ("bad epochs", "train", {"train": {"epochs": 0}}, "spec.train.epochs must be a positive"),
    ("2-D stats", "statistics", {"statistics": {"columns": [{"name": "x"}]}}, "need a 1-D column"),
    ("unknown stat", "statistics", {"statistics": {"columns": [{"name": "y", "stats": ["median"]}]}}, "stats must be"),
    ("gaussian without delta", "statistics", {"statistics": {"columns": [{"name": "y"}]}, "privacy": {"epsilon": 1.0, "mechanism": "gaussian"}}, "needs spec.privacy.delta"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "spec", "reason"), [case[1:] for case in BAD_JOBS], ids=[case[0] for case in BAD_JOBS]
)
def test_bad_jobs_fail_with_a_one_line_reason(
    tmp_path: Path,
    data: digits.Digits,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    spec: dict[str, Any],
    reason: str,
) -> None:
    files: dict[str, Any] = {"model": digits.mlp()} if kind == "evaluate" else {}
    job_dir = digits_job(tmp_path, data, kind, spec, **files)

    assert reason in run_failing(job_dir, capsys)


def test_an_mse_target_that_does_not_fit_the_output_is_named(
    tmp_path: Path, data: digits.Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {"evaluate": {"loss": "mse"}}
    job_dir = digits_job(tmp_path, data, "evaluate", spec, model=digits.mlp())

    reason = run_failing(job_dir, capsys)

    assert reason.startswith("mse: the model's output has shape [1024, 10]")


def test_an_error_inside_the_model_is_reported_by_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 3 features for a model that takes 64
    columns: dict[str, np.ndarray] = {
        "x": np.zeros((5, 3), dtype=np.float32),
        "y": np.zeros(5, dtype=np.int64),
    }
    spec = {"features": ["x"], "target": "y", "evaluate": {"loss": "cross_entropy"}}
    job_dir = write_job(tmp_path, "evaluate", spec, columns, {}, model=digits.mlp())

    # Execute
    reason = run_failing(job_dir, capsys)

    # Assert
    assert reason == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (5x3 and 64x64)"


def test_a_missing_job_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"no job.json in {tmp_path}"
