"""Helpers for data-centric tests: datasets as files, job submission, acting as a Worker."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from tests.support.users import bearer


def npz_bytes(**columns: np.ndarray) -> bytes:
    """An NPZ file holding ``columns``."""
    buffer = io.BytesIO()
    np.savez(buffer, **columns)  # type: ignore[arg-type]
    return buffer.getvalue()


def upload(
    client: Any,
    token: str,
    data: bytes,
    filename: str,
    name: str = "people",
    tags: str = "health,tabular",
    **fields: Any,
) -> Any:
    """``POST /data-centric/datasets`` through the test client."""
    form: dict[str, Any] = {"name": name, "tags": tags, **fields}
    files = {"data": (io.BytesIO(data), filename)}
    if "mock" in form:
        mock_data, mock_name = form.pop("mock")
        files["mock"] = (io.BytesIO(mock_data), mock_name)
    return client.post(
        "/data-centric/datasets",
        data={**form, **files},
        headers=bearer(token),
        content_type="multipart/form-data",
    )


def submit(client: Any, token: str, spec: dict[str, Any], **files: bytes) -> Any:
    """``POST /data-centric/jobs`` through the test client."""
    data: dict[str, Any] = {"spec": json.dumps(spec)}
    data |= {name: (io.BytesIO(blob), name) for name, blob in files.items()}
    return client.post(
        "/data-centric/jobs",
        data=data,
        headers=bearer(token),
        content_type="multipart/form-data",
    )


def worker_token(client: Any, owner_token: str, name: str = "w") -> str:
    """A fresh worker token."""
    response = client.post(
        "/data-centric/worker-tokens", json={"name": name}, headers=bearer(owner_token)
    )
    assert response.status_code == 201, response.get_json()
    token: str = response.get_json()["token"]
    return token


def report(
    client: Any,
    token: str,
    job_id: int,
    lease_id: str,
    result: bytes,
    metrics: dict[str, float] | None = None,
) -> Any:
    """``POST .../result`` as a Worker."""
    return client.post(
        f"/data-centric/worker/jobs/{job_id}/result",
        data={
            "lease_id": lease_id,
            "metrics": json.dumps(metrics or {}),
            "result": (io.BytesIO(result), "result.safetensors"),
        },
        headers=bearer(token),
        content_type="multipart/form-data",
    )
