"""Data-centric FL from Python: datasets, jobs, reviews, budgets (docs/data-centric.md).

One client serves every role; the Node decides what each user may do. A data scientist
searches, downloads mocks, submits jobs, waits and fetches released results; an owner uploads
datasets, reviews and releases jobs, sets budgets and creates worker tokens. ``job`` and
``dataset`` arguments take an id or the dict the API returned. torch is imported only where
tensors are built or read.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pygrid.client.http import GridError, HttpClient, base_url

if TYPE_CHECKING:
    import torch

__all__ = ["TERMINAL_STATES", "DataCentricClient", "JobFailed"]

KINDS = ("train", "evaluate", "statistics")
#: States a job never leaves; ``wait`` raises `JobFailed` on reaching one it was not asked for.
TERMINAL_STATES = ("denied", "failed", "cancelled")
_FORMATS = ("csv", "npz", "safetensors")
_OCTETS = "application/octet-stream"

Ref = int | Mapping[str, Any]


class JobFailed(GridError):
    """A job ended denied, failed or cancelled instead of reaching the awaited state."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        self.job = dict(job)
        self.state = str(job.get("state"))
        self.reason = str(
            job.get("error") or job.get("review_reason") or job.get("withheld_reason") or ""
        )
        verb = "failed" if self.state == "failed" else f"was {self.state}"
        message = f"job {job.get('id')} {verb}"
        super().__init__(None, f"{message}: {self.reason}" if self.reason else message, self.job)


def _id(ref: Ref, what: str) -> int:
    """The id of a job or dataset given as an int or the API's dict."""
    if isinstance(ref, Mapping):
        ref = ref["id"]
    if isinstance(ref, bool) or not isinstance(ref, int):
        raise TypeError(f"a {what} is an int id or the dict the API returned, not {ref!r}")
    return ref


def _tags(tags: str | Iterable[str]) -> list[str]:
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    return [t.strip() for t in items if t.strip()]


def _sniff_format(data: bytes) -> str:
    """npz (a zip), safetensors (a little-endian header length, then JSON) or csv."""
    if data[:4] == b"PK\x03\x04":
        return "npz"
    if len(data) > 9 and data[8:9] == b"{":
        size = int.from_bytes(data[:8], "little")
        if 2 <= size <= len(data) - 8:
            return "safetensors"
    return "csv"


class DataCentricClient:
    """Datasets, jobs, reviews, budgets, worker tokens and the audit log of one Node.

    With ``node_id``, ``url`` is a Network and every request goes through its route to that
    Node (``<url>/nodes/<node_id>/...``); the Node still checks the token.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60,
        *,
        node_id: str | None = None,
    ) -> None:
        self.http = HttpClient(base_url(url, node_id), token, timeout)
        self.node_id = node_id

    @property
    def url(self) -> str:
        """The Node's base URL (its route on the Network when a node_id was given)."""
        return self.http.url

    def __enter__(self) -> DataCentricClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()

    def login(self, email: str, password: str) -> str:
        """Log in; the client logs in again by itself when the short-lived token runs out."""
        return self.http.login(email, password)

    # Datasets -------------------------------------------------------------------------------

    def search(self, tags: str | Iterable[str] | None = None, q: str | None = None) -> list[Any]:
        """Datasets carrying every tag in ``tags`` and matching ``q`` (name, description, tags)."""
        params = {}
        if tags:
            params["tags"] = ",".join(_tags(tags))
        if q:
            params["q"] = q
        return list(self.http.json("GET", "/data-centric/search", params=params)["datasets"])

    def datasets(self) -> list[Any]:
        """Every dataset on the Node (metadata, schema and mock only)."""
        return list(self.http.json("GET", "/data-centric/datasets")["datasets"])

    def dataset(self, dataset: Ref) -> dict[str, Any]:
        """One dataset's metadata."""
        answer: dict[str, Any] = self.http.json(
            "GET", f"/data-centric/datasets/{_id(dataset, 'dataset')}"
        )
        return answer

    def mock_bytes(self, dataset: Ref, fmt: str = "safetensors") -> bytes:
        """The dataset's mock sample as the Node sends it: safetensors, or ``fmt="csv"``."""
        params = {"format": "csv"} if fmt == "csv" else {}
        path = f"/data-centric/datasets/{_id(dataset, 'dataset')}/mock"
        return self.http.request("GET", path, params=params).content

    def mock(self, dataset: Ref) -> dict[str, torch.Tensor]:
        """The mock sample, one tensor per column (never real rows)."""
        from pygrid import serde

        data = self.mock_bytes(dataset)
        return serde.load(data, max_bytes=len(data), allow_nonfinite=True)

    def upload_dataset(
        self,
        data: str | Path | bytes | Mapping[str, Any],
        *,
        name: str,
        tags: str | Iterable[str] = (),
        description: str = "",
        target: str | None = None,
        mock: str | Path | bytes | Mapping[str, Any] | None = None,
        schema: str | Mapping[str, Any] | None = None,
        fmt: str | None = None,
    ) -> dict[str, Any]:
        """Upload a dataset: a CSV, NPZ or safetensors file (a path or its bytes) or a dict of
        tensors (sent as safetensors); ``mock`` likewise; ``schema`` declares public bounds."""
        if fmt is not None and fmt not in _FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, not {fmt!r}")
        files = {"data": _upload("data", data, fmt)}
        if mock is not None:
            files["mock"] = _upload("mock", mock, None)
        form: dict[str, str] = {
            "name": name,
            "description": description,
            "tags": ",".join(_tags(tags)),
        }
        if target is not None:
            form["target"] = target
        if schema is not None:
            form["schema"] = schema if isinstance(schema, str) else json.dumps(dict(schema))
        if fmt is not None:
            form["format"] = fmt
        answer: dict[str, Any] = self.http.json(
            "POST", "/data-centric/datasets", data=form, files=files
        )
        return answer

    def update_dataset(self, dataset: Ref, **fields: Any) -> dict[str, Any]:
        """Change ``name``, ``description``, ``tags`` or ``auto_release_epsilon`` (None clears it)."""
        if "tags" in fields and fields["tags"] is not None:
            fields["tags"] = _tags(fields["tags"])
        answer: dict[str, Any] = self.http.json(
            "PATCH", f"/data-centric/datasets/{_id(dataset, 'dataset')}", json=fields
        )
        return answer

    def delete_dataset(self, dataset: Ref) -> None:
        """Delete a dataset (refused with 409 while a job on it is queued or running)."""
        self.http.request("DELETE", f"/data-centric/datasets/{_id(dataset, 'dataset')}")

    # Jobs -----------------------------------------------------------------------------------

    def submit_job(
        self,
        dataset: Ref,
        kind: str,
        *,
        model: Any = None,
        plan: Any = None,
        params: Mapping[str, Any] | bytes | None = None,
        features: Iterable[str] | None = None,
        target: str | None = None,
        train: Mapping[str, Any] | None = None,
        evaluate: Mapping[str, Any] | None = None,
        statistics: Mapping[str, Any] | None = None,
        privacy: Mapping[str, Any] | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        loss: str | None = None,
        optimizer: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job for review; it waits in ``pending_review``.

        ``model`` is an ``nn.Module`` (scripted here), a ScriptModule or TorchScript bytes;
        ``plan`` a ScriptModule or bytes with ``params`` (a dict of tensors or safetensors
        bytes). ``epochs``, ``batch_size``, ``lr``, ``loss`` and ``optimizer`` fill ``train``.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        conveniences = {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "loss": loss,
            "optimizer": optimizer,
        }
        given = {k: v for k, v in conveniences.items() if v is not None}
        if given and kind != "train":
            raise ValueError(f"{', '.join(given)} only apply to train jobs; use evaluate=...")
        spec: dict[str, Any] = {"dataset_id": _id(dataset, "dataset"), "kind": kind}
        if features is not None:
            spec["features"] = [features] if isinstance(features, str) else list(features)
        if target is not None:
            spec["target"] = target
        if train is not None or given:
            spec["train"] = {**dict(train or {}), **given}
        for key, value in (("evaluate", evaluate), ("statistics", statistics)):
            if value is not None:
                spec[key] = dict(value)
        if privacy is not None:
            spec["privacy"] = dict(privacy)
        # ``spec`` goes as a multipart field without a file name (a form field): a job with no
        # files must still be multipart, and a retry after a re-login rewinds every part.
        files: dict[str, tuple[str | None, BinaryIO, str | None]] = {
            "spec": (None, io.BytesIO(json.dumps(spec).encode()), None)
        }
        if model is not None:
            files["model"] = ("model.pt", io.BytesIO(_torchscript(model, script=True)), _OCTETS)
        if plan is not None:
            files["plan"] = ("plan.pt", io.BytesIO(_torchscript(plan, script=False)), _OCTETS)
        if params is not None:
            files["params"] = ("params.safetensors", io.BytesIO(_safetensors(params)), _OCTETS)
        answer: dict[str, Any] = self.http.json("POST", "/data-centric/jobs", files=files)
        return answer

    def job(self, job: Ref) -> dict[str, Any]:
        """One job, as its requester or a reviewer sees it."""
        answer: dict[str, Any] = self.http.json("GET", f"/data-centric/jobs/{_id(job, 'job')}")
        return answer

    def jobs(self, state: str | None = None) -> list[Any]:
        """Own jobs (every job for a reviewer), optionally only those in ``state``."""
        params = {"state": state} if state else {}
        return list(self.http.json("GET", "/data-centric/jobs", params=params)["jobs"])

    def wait(
        self,
        job: Ref,
        timeout: float = 600.0,
        until: Iterable[str] = ("released",),
        poll: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job's state is in ``until``; `JobFailed` if it is denied, failed or
        cancelled instead; TimeoutError after ``timeout`` seconds. ``on_progress(job)`` sees
        every poll."""
        wanted = set(until)
        job_id = _id(job, "job")
        deadline = time.monotonic() + timeout
        while True:
            current = self.job(job_id)
            if on_progress is not None:
                on_progress(current)
            if current["state"] in wanted:
                return current
            if current["state"] in TERMINAL_STATES:
                raise JobFailed(current)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} is still {current['state']} after {timeout:g} s "
                    f"(waiting for {', '.join(sorted(wanted))})"
                )
            time.sleep(poll)

    def result_bytes(self, job: Ref) -> bytes:
        """The released result as safetensors bytes."""
        return self.http.request("GET", f"/data-centric/jobs/{_id(job, 'job')}/result").content

    def result(self, job: Ref, model: Any = None) -> Any:
        """The released result, a dict of tensors by name; with ``model``, loaded into it.

        A result the Node withholds (not released yet, over budget) raises its GridError.
        """
        from pygrid import serde

        data = self.result_bytes(job)
        tensors = serde.load(data, max_bytes=len(data), allow_nonfinite=True)
        if model is None:
            return tensors
        model.load_state_dict(tensors)
        return model

    def cancel(self, job: Ref) -> dict[str, Any]:
        """Cancel your own job while it is pending review or queued."""
        return self._post_job(job, "cancel")

    # Review and release ------------------------------------------------------------------------

    def pending(self) -> list[Any]:
        """Jobs waiting for review."""
        return self.jobs(state="pending_review")

    def approve(self, job: Ref, reason: str = "") -> dict[str, Any]:
        """Approve a pending job: it joins the queue for the Workers."""
        return self._post_job(job, "approve", {"reason": reason} if reason else {})

    def deny(self, job: Ref, reason: str) -> dict[str, Any]:
        """Deny a pending job, saying why."""
        return self._post_job(job, "deny", {"reason": reason})

    def release(self, job: Ref) -> dict[str, Any]:
        """Sign off a finished result: charges the requester's budget and releases it."""
        return self._post_job(job, "release")

    def _post_job(self, job: Ref, action: str, body: Mapping[str, Any] | None = None) -> Any:
        path = f"/data-centric/jobs/{_id(job, 'job')}/{action}"
        return self.http.json("POST", path, json=dict(body or {}))

    # Budgets, audit, worker tokens ----------------------------------------------------------

    def set_budget(self, dataset: Ref, user_email: str, epsilon: float) -> dict[str, Any]:
        """Set a user's total epsilon on a dataset."""
        body = {"dataset_id": _id(dataset, "dataset"), "user_email": user_email, "epsilon": epsilon}
        answer: dict[str, Any] = self.http.json("PUT", "/data-centric/budgets", json=body)
        return answer

    def budgets(self, dataset: Ref | None = None, user_email: str | None = None) -> list[Any]:
        """Budgets: your own, or everyone's for a budget manager."""
        params: dict[str, Any] = {}
        if dataset is not None:
            params["dataset_id"] = _id(dataset, "dataset")
        if user_email:
            params["user_email"] = user_email
        return list(self.http.json("GET", "/data-centric/budgets", params=params)["budgets"])

    def audit(
        self,
        dataset: Ref | None = None,
        job: Ref | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """Audit events, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if dataset is not None:
            params["dataset_id"] = _id(dataset, "dataset")
        if job is not None:
            params["job_id"] = _id(job, "job")
        if action:
            params["action"] = action
        return list(self.http.json("GET", "/data-centric/audit", params=params)["events"])

    def create_worker_token(self, name: str, expires_in_days: int | None = None) -> dict[str, Any]:
        """A new worker token ``{id, name, token, expires_at}``: the token is shown only now."""
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        answer: dict[str, Any] = self.http.json("POST", "/data-centric/worker-tokens", json=body)
        return answer

    def worker_tokens(self) -> list[Any]:
        """Every worker token (never the secret), with when each was last seen."""
        return list(self.http.json("GET", "/data-centric/worker-tokens")["tokens"])

    def revoke_worker_token(self, token: Ref) -> None:
        """Revoke a worker token: its Worker's next request is refused."""
        self.http.request("DELETE", f"/data-centric/worker-tokens/{_id(token, 'worker token')}")


def _upload(
    field: str, data: str | Path | bytes | Mapping[str, Any], fmt: str | None
) -> tuple[str, BinaryIO, str]:
    """A multipart file: a path keeps its file name (the Node reads the format from it)."""
    if isinstance(data, Mapping):
        return (f"{field}.safetensors", io.BytesIO(_safetensors(data)), _OCTETS)
    if isinstance(data, bytes | bytearray):
        content = bytes(data)
        return (f"{field}.{fmt or _sniff_format(content)}", io.BytesIO(content), _OCTETS)
    path = Path(data)
    return (path.name, io.BytesIO(path.read_bytes()), _OCTETS)


def _safetensors(params: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(params, bytes | bytearray):
        return bytes(params)
    import torch

    from pygrid import serde

    return serde.dump({k: torch.as_tensor(v) for k, v in params.items()})


def _torchscript(code: Any, *, script: bool) -> bytes:
    """TorchScript bytes of a module (scripted when ``script``), a ScriptModule or bytes."""
    if isinstance(code, bytes | bytearray):
        return bytes(code)
    import torch

    from pygrid import plans

    if not isinstance(code, torch.jit.ScriptModule):
        if not (script and isinstance(code, torch.nn.Module)):
            what = "an nn.Module, a ScriptModule or bytes" if script else "a ScriptModule or bytes"
            raise TypeError(f"expected {what}, got {type(code).__name__}")
        with plans._jit_quiet():
            code = torch.jit.script(code)
    return plans.save_plan(code)
