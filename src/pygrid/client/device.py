"""The device side of model-centric FL: request a cycle, train with the plan, report the diff.

A job trains on tensors that never leave the device; only the diff (original - trained) and a
few metrics are sent. Events: ``accepted``, ``rejected``, ``reported``, ``error``.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pygrid import plans as plan_tools
from pygrid import serde
from pygrid.client.http import GridError, HttpClient, base_url

Handler = Callable[..., None]
MAX_DOWNLOAD_BYTES = 1 << 31


@dataclass
class CycleOutcome:
    """What one attempt at a cycle came to."""

    status: str  # "reported" or "rejected"
    timeout: float | None = None
    cycle: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    diff: dict[str, torch.Tensor] | None = None
    num_samples: int = 0


class FLClient:
    """A device's connection to one Node; with ``node_id``, ``url`` is a Network and every
    request goes through its route to that Node."""

    def __init__(
        self,
        url: str,
        auth_token: str | None = None,
        timeout: float = 120,
        *,
        node_id: str | None = None,
    ) -> None:
        self.http = HttpClient(base_url(url, node_id), timeout=timeout)
        self.auth_token = auth_token
        self.node_id = node_id

    def new_job(self, model_name: str, version: str | None = None) -> FLJob:
        """A job that trains ``model_name`` (its newest version if none is given)."""
        return FLJob(self, model_name, version)


class FLJob:
    """Authenticates once, then trains in as many cycles as it is let into."""

    def __init__(self, client: FLClient, model_name: str, version: str | None) -> None:
        self.client = client
        self.model_name = model_name
        self.version = version
        self.worker_id: str | None = None
        self.requires_speed_test = False
        self._handlers: dict[str, list[Handler]] = {}
        self._plans: dict[int, Any] = {}
        # Applied to each diff before it is sent (simulations of misbehaving devices use it).
        self.diff_filter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def on(self, event: str, handler: Handler) -> FLJob:
        """Call ``handler`` on ``accepted``, ``rejected``, ``reported`` or ``error``."""
        if event not in {"accepted", "rejected", "reported", "error"}:
            raise ValueError(f"unknown event {event!r}")
        self._handlers.setdefault(event, []).append(handler)
        return self

    def _emit(self, event: str, *args: Any) -> None:
        for handler in self._handlers.get(event, []):
            handler(*args)

    def authenticate(self) -> str:
        """Get a worker_id from the Node (once)."""
        if self.worker_id is None:
            answer = self.client.http.json(
                "POST",
                "/model-centric/authenticate",
                json={
                    "model_name": self.model_name,
                    "model_version": self.version,
                    "auth_token": self.client.auth_token,
                },
            )
            self.worker_id = str(answer["worker_id"])
            self.requires_speed_test = bool(answer["requires_speed_test"])
        return self.worker_id

    def speed_test(self, size: int = 1024 * 1024) -> dict[str, float]:
        """Measure ping (ms) and download/upload speed (Mbit/s) against the Node."""
        worker_id = self.authenticate()
        http = self.client.http
        started = time.perf_counter()
        http.request("GET", "/status")
        ping = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        data = http.request(
            "GET", "/model-centric/speed-test", params={"worker_id": worker_id, "size": size}
        ).content
        download = len(data) * 8 / 1e6 / max(time.perf_counter() - started, 1e-6)
        started = time.perf_counter()
        http.request(
            "POST", "/model-centric/speed-test", params={"worker_id": worker_id}, data=data
        )
        upload = len(data) * 8 / 1e6 / max(time.perf_counter() - started, 1e-6)
        return {"ping": ping, "download": download, "upload": upload}

    def run_cycle(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> CycleOutcome:
        """One attempt: request a cycle; if accepted, train on (x, y) and report the diff."""
        try:
            return self._run_cycle(x, y, generator)
        except Exception as exc:
            self._emit("error", exc)
            raise

    def _run_cycle(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> CycleOutcome:
        worker_id = self.authenticate()
        http = self.client.http
        request: dict[str, Any] = {
            "worker_id": worker_id,
            "model": self.model_name,
            "version": self.version,
        }
        if self.requires_speed_test:
            request.update(self.speed_test())
        answer = http.json("POST", "/model-centric/cycle-request", json=request)
        if answer["status"] != "accepted":
            self._emit("rejected", answer.get("timeout"), answer.get("reason"))
            return CycleOutcome("rejected", timeout=answer.get("timeout"))
        self._emit("accepted", answer)
        key = answer["request_key"]
        model_bytes = http.request(
            "GET",
            "/model-centric/get-model",
            params={"worker_id": worker_id, "request_key": key, "model_id": answer["model_id"]},
        ).content
        original = serde.load(model_bytes, max_bytes=MAX_DOWNLOAD_BYTES)
        plan = self._plan(worker_id, key, answer["plans"]["training_plan"])
        trained, metrics, num_samples = train(
            plan, original, x, y, answer["client_config"], generator
        )
        diff = {name: original[name] - trained[name] for name in original}
        if self.diff_filter is not None:
            diff = self.diff_filter(diff)
        files = {
            "diff": ("diff.safetensors", io.BytesIO(serde.dump(diff)), "application/octet-stream")
        }
        form = {
            "worker_id": worker_id,
            "request_key": key,
            "num_samples": str(num_samples),
            "metrics": _json(metrics),
        }
        http.json("POST", "/model-centric/report", data=form, files=files)
        outcome = CycleOutcome(
            "reported",
            cycle=answer.get("cycle_sequence"),
            metrics=metrics,
            diff=diff,
            num_samples=num_samples,
        )
        self._emit("reported", outcome)
        return outcome

    def _plan(self, worker_id: str, key: str, plan_id: int) -> Any:
        if plan_id not in self._plans:
            data = self.client.http.request(
                "GET",
                "/model-centric/get-plan",
                params={"worker_id": worker_id, "request_key": key, "plan_id": plan_id},
            ).content
            # The device checks the plan too: it runs code from the network.
            self._plans[plan_id] = plan_tools.load_plan(data, max_bytes=MAX_DOWNLOAD_BYTES)
        return self._plans[plan_id]

    def start(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        cycles: int | None = None,
        max_wait: float = 3600,
        generator: torch.Generator | None = None,
    ) -> list[CycleOutcome]:
        """Train in up to ``cycles`` cycles (until training is over if None), waiting as told."""
        done: list[CycleOutcome] = []
        waited = 0.0
        while cycles is None or len(done) < cycles:
            outcome = self.run_cycle(x, y, generator)
            if outcome.status == "reported":
                done.append(outcome)
                continue
            if outcome.timeout is None:
                break
            if waited + outcome.timeout > max_wait:
                raise GridError(None, f"gave up after waiting {waited:.0f} s for a cycle")
            pause = max(outcome.timeout, 0.05)
            time.sleep(pause)
            waited += pause
        return done


def _json(data: dict[str, float]) -> str:
    import json

    return json.dumps(data)


def train(
    plan: Any,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    client_config: dict[str, Any],
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """Run the plan over shuffled batches: ``extras.epochs`` passes (default 1), at most
    ``max_updates`` batches. Returns trained params, mean loss/accuracy, and samples used."""
    batch_size = int(client_config["batch_size"])
    lr = float(client_config["lr"])
    epochs = int(client_config.get("extras", {}).get("epochs", 1))
    max_updates = int(client_config["max_updates"])
    names = list(params)
    current = [params[n].clone() for n in names]
    losses: list[float] = []
    accuracies: list[float] = []
    seen = 0
    batches_per_epoch = math.ceil(len(x) / batch_size)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for b in range(batches_per_epoch):
            if len(losses) >= max_updates:
                break
            index = order[b * batch_size : (b + 1) * batch_size]
            loss, accuracy, current = plan(x[index], y[index], lr, current)
            losses.append(float(loss))
            accuracies.append(float(accuracy))
            seen = max(seen, min(len(x), (b + 1) * batch_size))
    metrics = {"loss": sum(losses) / len(losses), "accuracy": sum(accuracies) / len(accuracies)}
    return {n: t.detach() for n, t in zip(names, current, strict=True)}, metrics, seen
