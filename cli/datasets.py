"""``pygrid dataset``: upload, list, show, update and delete a Node's datasets; get a mock."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pygrid.cli import session
from pygrid.cli.grid import OutputFormat
from pygrid.cli.servers import fail
from pygrid.cli.session import EmailOption, NodeOption, PasswordOption

app = typer.Typer(help="Datasets kept on a Node: upload, list, update, delete, mock samples.")

OWNER = "a user allowed to upload datasets (owner or admin)"
DatasetId = Annotated[int, typer.Argument(help="The dataset's id (see pygrid dataset list).")]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="A table for people or JSON for scripts.")
]


class DataFormat(StrEnum):
    """Formats a dataset is uploaded in."""

    csv = "csv"
    npz = "npz"
    safetensors = "safetensors"


@app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="The private data: a CSV, NPZ or safetensors file.")],
    name: Annotated[str, typer.Option("--name", help="A name, unique on the Node.")],
    tags: Annotated[
        str, typer.Option("--tags", help="Comma-separated tags data scientists search by.")
    ] = "",
    description: Annotated[
        str, typer.Option("--description", help="What the data is, for data scientists.")
    ] = "",
    target: Annotated[
        str | None,
        typer.Option("--target", help="The column a model predicts.", show_default=False),
    ] = None,
    mock: Annotated[
        Path | None,
        typer.Option(
            "--mock",
            help="A mock sample in the same format (default: generated from the schema).",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema",
            help="A JSON schema declaring wider public bounds per column.",
            show_default=False,
        ),
    ] = None,
    data_format: Annotated[
        DataFormat | None,
        typer.Option(
            "--format", help="The file's format (default: from its name).", show_default=False
        ),
    ] = None,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Upload a dataset: its rows stay on the Node; data scientists see its schema and a mock."""
    for path in (file, mock, schema):
        if path is not None and not path.is_file():
            raise fail(f"no such file: {path}")
    schema_text = None
    if schema is not None:
        schema_text = schema.read_text()
        try:
            json.loads(schema_text)
        except ValueError as exc:
            raise fail(f"{schema} is not JSON: {exc}") from None
    with session.connect(node, email, password, OWNER) as client:
        dataset = client.upload_dataset(
            file,
            name=name,
            tags=tags,
            description=description,
            target=target,
            mock=mock,
            schema=schema_text,
            fmt=data_format.value if data_format else None,
        )
    out = session.console()
    origin = "generated from the schema" if dataset.get("mock_generated") else "yours"
    out.print(
        f"Uploaded dataset {dataset['id']} {dataset['name']!r}: {_summary(dataset)}; "
        f"mock sample: {origin}"
    )


@app.command("list")
def list_datasets(
    fmt: FormatOption = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Every dataset on the Node."""
    with session.connect(node, email, password) as client:
        datasets = client.datasets()
    if fmt == OutputFormat.json:
        session.print_json(datasets)
        return
    session.print_table(
        datasets,
        {
            "id": "id",
            "name": "name",
            "tags": "tags",
            "rows": lambda d: (d.get("schema") or {}).get("rows"),
            "columns": lambda d: _columns(d.get("schema") or {}),
            "target": lambda d: (d.get("schema") or {}).get("target"),
            "size": lambda d: _size(d.get("size_bytes")),
            "auto-release ε": "auto_release_epsilon",
        },
        empty="No datasets on this Node yet: upload one with pygrid dataset upload.",
    )


@app.command("show")
def show(
    dataset_id: DatasetId,
    fmt: FormatOption = OutputFormat.table,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """One dataset: its description, tags and schema."""
    with session.connect(node, email, password) as client:
        dataset = client.dataset(dataset_id)
    if fmt == OutputFormat.json:
        session.print_json(dataset)
        return
    out = session.console()
    out.print(f"Dataset {dataset['id']}: {dataset['name']}")
    for label, value in (
        ("description", dataset.get("description")),
        ("tags", dataset.get("tags")),
        ("rows", (dataset.get("schema") or {}).get("rows")),
        ("target", (dataset.get("schema") or {}).get("target")),
        ("format", (dataset.get("schema") or {}).get("source_format")),
        ("size", _size(dataset.get("size_bytes"))),
        ("mock", "generated from the schema" if dataset.get("mock_generated") else "the owner's"),
        ("auto-release ε", dataset.get("auto_release_epsilon")),
        ("created (UTC)", session.when(dataset.get("created_at"))),
        ("updated (UTC)", session.when(dataset.get("updated_at"))),
    ):
        out.print(f"  {label}: {session.cell_text(value)}")
    session.print_table(
        list((dataset.get("schema") or {}).get("columns") or []),
        {
            "column": "name",
            "dtype": "dtype",
            "shape": lambda c: "[" + ", ".join(str(n) for n in c.get("shape") or []) + "]",
            "min": "min",
            "max": "max",
            "categories": "categories",
        },
        empty="  (no columns)",
    )


@app.command("update")
def update(
    dataset_id: DatasetId,
    name: Annotated[
        str | None, typer.Option("--name", help="A new name.", show_default=False)
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="A new description.", show_default=False)
    ] = None,
    tags: Annotated[
        str | None,
        typer.Option(
            "--tags", help="New comma-separated tags (replace the old ones).", show_default=False
        ),
    ] = None,
    auto_release_epsilon: Annotated[
        float | None,
        typer.Option(
            "--auto-release-epsilon",
            help="Release finished DP results costing at most this epsilon without sign-off, "
            "budget permitting.",
            show_default=False,
        ),
    ] = None,
    no_auto_release: Annotated[
        bool,
        typer.Option("--no-auto-release", help="Every result needs the owner's sign-off again."),
    ] = False,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Change a dataset's name, description, tags or auto-release rule."""
    fields: dict[str, Any] = {
        k: v
        for k, v in (("name", name), ("description", description), ("tags", tags))
        if v is not None
    }
    if auto_release_epsilon is not None:
        if no_auto_release:
            raise fail("pass --auto-release-epsilon or --no-auto-release, not both")
        _check_epsilon(auto_release_epsilon, "--auto-release-epsilon")
        fields["auto_release_epsilon"] = auto_release_epsilon
    elif no_auto_release:
        fields["auto_release_epsilon"] = None
    if not fields:
        raise fail(
            "nothing to change: pass --name, --description, --tags, --auto-release-epsilon "
            "or --no-auto-release"
        )
    with session.connect(node, email, password, OWNER) as client:
        dataset = client.update_dataset(dataset_id, **fields)
    session.console().print(
        f"Updated dataset {dataset['id']} {dataset['name']!r}: {', '.join(sorted(fields))}"
    )


@app.command("delete")
def delete(
    dataset_id: DatasetId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Delete a dataset, its private data and its mock (asks first unless --yes)."""
    with session.connect(node, email, password, OWNER) as client:
        dataset = client.dataset(dataset_id)
        if not yes:
            try:
                confirmed = typer.confirm(
                    f"Delete dataset {dataset_id} {dataset['name']!r} and its private data?"
                )
            except typer.Abort:
                confirmed = False
            if not confirmed:
                raise fail(
                    f"dataset {dataset_id} was not deleted (pass --yes to skip the question)"
                )
        client.delete_dataset(dataset_id)
    session.console().print(f"Deleted dataset {dataset_id} {dataset['name']!r}")


@app.command("mock")
def mock(
    dataset_id: DatasetId,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the mock.")],
    csv: Annotated[
        bool, typer.Option("--csv", help="CSV instead of safetensors (1-D columns only).")
    ] = False,
    node: NodeOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
) -> None:
    """Download a dataset's mock sample: the schema's shape, never real rows."""
    if not output.parent.is_dir():
        raise fail(f"no such directory: {output.parent}")
    with session.connect(node, email, password) as client:
        data = client.mock_bytes(dataset_id, fmt="csv" if csv else "safetensors")
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    session.console().print(
        f"Wrote the mock of dataset {dataset_id} to {output} ({_size(len(data))})"
    )


def _check_epsilon(value: float, option: str) -> None:
    if not math.isfinite(value) or value <= 0:
        raise fail(f"{option} must be a positive number, not {value:g}")


def _summary(dataset: dict[str, Any]) -> str:
    schema = dataset.get("schema") or {}
    return f"{schema.get('rows', '?')} rows, columns {_columns(schema)}"


def _columns(schema: dict[str, Any]) -> str:
    """``x float32[64], y int64``."""
    parts = []
    for column in schema.get("columns") or []:
        shape = column.get("shape") or []
        dims = "[" + ", ".join(str(n) for n in shape) + "]" if shape else ""
        parts.append(f"{column.get('name')} {column.get('dtype')}{dims}")
    return ", ".join(parts) or "-"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
