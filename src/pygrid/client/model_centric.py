"""The data scientist's side of model-centric FL: host a process, watch it, get the model."""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import torch

from pygrid import plans as plan_tools
from pygrid import serde
from pygrid.client.http import HttpClient, base_url

ModelLike = torch.nn.Module | dict[str, torch.Tensor]


def parameters_of(model: ModelLike) -> dict[str, torch.Tensor]:
    """A module's parameters in ``named_parameters`` order (the order plans rely on)."""
    if isinstance(model, torch.nn.Module):
        return {name: p.detach().clone() for name, p in model.named_parameters()}
    return dict(model)


class ModelCentricFLClient:
    """Host FL processes on a Node, follow their cycles, and retrieve checkpoints.

    With ``node_id``, ``url`` is a Network and every request goes through its route to that
    Node (``<url>/nodes/<node_id>/...``).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 120,
        *,
        node_id: str | None = None,
    ) -> None:
        self.http = HttpClient(base_url(url, node_id), token, timeout)
        self.node_id = node_id

    def login(self, email: str, password: str) -> None:
        """Log in as a user with the host_processes permission."""
        self.http.login(email, password)

    def host_federated_training(
        self,
        model: ModelLike,
        client_config: dict[str, Any],
        server_config: dict[str, Any] | None = None,
        plans: dict[str, torch.jit.ScriptModule | bytes] | None = None,
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
    ) -> dict[str, Any]:
        """Host ``model`` with its plans; builds the training plan from the module when omitted."""
        if plans is None:
            if not isinstance(model, torch.nn.Module):
                raise ValueError("pass plans= when model is a dict of tensors")
            plans = {"training_plan": plan_tools.training_plan(model, loss=loss)}
        files: dict[str, tuple[str, io.BytesIO, str]] = {
            "model": (
                "model.safetensors",
                io.BytesIO(serde.dump(parameters_of(model))),
                "application/octet-stream",
            )
        }
        for name, plan in plans.items():
            data = plan if isinstance(plan, bytes) else plan_tools.save_plan(plan)
            files[f"plan:{name}"] = (f"{name}.pt", io.BytesIO(data), "application/octet-stream")
        form = {
            "name": client_config["name"],
            "version": client_config["version"],
            "client_config": json.dumps(client_config),
            "server_config": json.dumps(server_config or {}),
        }
        answer: dict[str, Any] = self.http.json(
            "POST", "/model-centric/host-training", data=form, files=files
        )
        return answer

    def processes(self) -> list[dict[str, Any]]:
        """Every process this user may see, with status."""
        return list(self.http.json("GET", "/model-centric/processes")["processes"])

    def status(self, process_id: int) -> dict[str, Any]:
        """Configs, cycles with metrics, and checkpoints of one process."""
        answer: dict[str, Any] = self.http.json("GET", f"/model-centric/processes/{process_id}")
        return answer

    def retrieve_model(
        self, name: str, version: str, checkpoint: str | int = "latest"
    ) -> dict[str, torch.Tensor]:
        """The parameters at a checkpoint ('latest' or its number)."""
        response = self.http.request(
            "GET",
            "/model-centric/retrieve-model",
            params={"name": name, "version": version, "checkpoint": str(checkpoint)},
        )
        return serde.load(response.content, max_bytes=len(response.content))


#: The name docs/network.md uses.
ModelCentricClient = ModelCentricFLClient
