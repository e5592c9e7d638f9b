"""Deploy, resume and destroy: the steps behind ``pygrid deploy`` and ``pygrid destroy``.

Every step updates the record first, so an interrupted or failed run leaves a deployment that
``pygrid deploy --resume`` finishes or ``pygrid destroy`` removes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygrid.deploy import records
from pygrid.deploy.options import Cloud, DeployOptions
from pygrid.deploy.records import Deployment, Status
from pygrid.deploy.render import check_offline, render
from pygrid.deploy.terraform import OnLine, Terraform

REGION_PATTERNS = {
    Cloud.gcp: re.compile(r"^[a-z]+-[a-z]+\d+$"),
    Cloud.azure: re.compile(r"^[a-z][a-z0-9]+$"),
}


class DeployError(RuntimeError):
    """A deployment step failed; the message says what to do next."""


@dataclass
class Rendered:
    """A rendered deployment folder and what checking it found."""

    directory: Path
    problems: list[str]
    validated_with_provider: bool
    note: str = ""


def provider_for(options: DeployOptions | dict[str, Any]) -> Any:
    """The cloud SDK provider for a deployment's cloud, region and endpoint."""
    from pygrid.providers import get_provider

    opts = options if isinstance(options, dict) else options.model_dump(mode="json")
    cloud = opts["cloud"]
    settings: dict[str, Any] = {"endpoint_url": opts.get("endpoint_url")}
    if cloud == "aws":
        settings["region"] = opts["region"]
    else:
        # GCP's managed instance groups and Azure's scale sets keep no bounds of their own:
        # the provider enforces the deployment's.
        settings["minimum"] = opts.get("workers_min", 0)
        settings["maximum"] = opts.get("workers_max", 0)
    if cloud == "gcp":
        settings.update(project=opts.get("project"), region=opts["region"])
    if cloud == "azure":
        settings["subscription_id"] = opts.get("subscription_id")
    return get_provider(cloud, **settings)


def check_region(options: DeployOptions) -> None:
    """DeployError for a region the cloud does not have."""
    if options.cloud is Cloud.aws:
        import boto3

        known = boto3.session.Session().get_available_regions("ec2")
        if options.region not in known:
            close = [r for r in known if r.split("-")[0] == options.region.split("-")[0]][:6]
            raise DeployError(
                f"unknown AWS region {options.region!r}"
                + (f"; did you mean one of {', '.join(close)}?" if close else "")
            )
        return
    if not REGION_PATTERNS[options.cloud].match(options.region):
        raise DeployError(
            f"{options.region!r} is not a {options.cloud} region name (e.g. {example_region(options.cloud)})"
        )


def example_region(cloud: Cloud) -> str:
    """A region name to show in messages."""
    from pygrid.deploy.options import DEFAULT_REGIONS

    return DEFAULT_REGIONS[cloud]


def render_checked(options: DeployOptions, terraform: Terraform | None = None) -> Rendered:
    """Render into the deployment folder and check it loads (and validates, where possible)."""
    directory = records.folder(options.name)
    render(options, directory)
    problems = check_offline(options, directory)
    validated = False
    note = "provider schema not checked: no terraform binary on PATH"
    if options.cloud is not Cloud.aws:
        note = f"provider schema not checked: the {options.cloud} provider plugin is not installed here"
    elif not problems and terraform is not None and terraform.binary:
        init = terraform.init()
        if not init.ok:
            note = f"provider schema not checked: terraform init failed ({init.tail(1)})"
        else:
            result = terraform.validate()
            validated = result.ok
            if not result.ok:
                problems.append(result.tail())
    return Rendered(directory, problems, validated, note)


def start(options: DeployOptions, resume: bool) -> Deployment:
    """The record to deploy under: a new one, or the interrupted one when resuming."""
    existing = records.load(options.name)
    if existing is not None and existing.status not in (Status.destroyed, Status.rendered):
        if not resume:
            hint = (
                "destroy it first or choose another --name"
                if existing.status == Status.applied
                else f"finish it with `pygrid deploy --name {options.name} --resume ...` or remove it with `pygrid destroy {options.name}`"
            )
            raise DeployError(
                f"the name {options.name!r} is in use by a {existing.status} {existing.cloud} deployment; {hint}"
            )
        if existing.cloud != options.cloud:
            raise DeployError(
                f"{options.name!r} is a {existing.cloud} deployment; resume it with --provider {existing.cloud}"
            )
    elif resume:
        raise DeployError(f"there is no interrupted deployment named {options.name!r} to resume")
    deployment = Deployment(
        name=options.name,
        cloud=str(options.cloud),
        app=str(options.app),
        options=options.model_dump(mode="json"),
        status=Status.applying,
    )
    if existing is not None and resume:
        deployment.created_at = existing.created_at
    records.save(deployment)
    return deployment


def apply(
    options: DeployOptions, deployment: Deployment, terraform: Terraform, on_line: OnLine
) -> Deployment:
    """init + apply; records the outputs, or the failure and how to recover."""
    for step in (terraform.init, terraform.apply):
        result = step(on_line)
        if not result.ok:
            deployment.status = Status.failed
            deployment.error = result.tail()
            deployment.outputs = terraform.outputs()
            records.save(deployment)
            raise DeployError(
                f"terraform {step.__name__} failed (the last lines are above). Fix the cause, then "
                f"`pygrid deploy --name {options.name} --resume ...`, or clean up with `pygrid destroy {options.name}`"
            )
    deployment.status = Status.applied
    deployment.error = None
    deployment.outputs = terraform.outputs()
    records.save(deployment)
    return deployment


def wait_healthy(url: str, timeout: float, on_tick: Callable[[float], None] | None = None) -> bool:
    """Poll ``url``/status until it answers 200 or ``timeout`` seconds pass."""
    import requests

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(f"{url.rstrip('/')}/status", timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if on_tick is not None:
            on_tick(time.monotonic() - started)
        time.sleep(5)
    return False


def destroy(name: str, on_line: OnLine) -> Deployment:
    """terraform destroy a recorded deployment; the record stays, marked destroyed."""
    deployment = records.load(name)
    if deployment is None:
        raise DeployError(f"no deployment named {name!r} (see `pygrid status`)")
    if deployment.status == Status.rendered:
        deployment.status = Status.destroyed
        records.save(deployment)
        return deployment
    deployment.status = Status.destroying
    records.save(deployment)
    terraform = Terraform(records.folder(name))
    for step in (terraform.init, terraform.destroy):
        result = step(on_line)
        if not result.ok:
            deployment.status = Status.failed
            deployment.error = result.tail()
            records.save(deployment)
            raise DeployError(
                f"terraform {step.__name__} failed; run `pygrid destroy {name}` again once fixed"
            )
    deployment.status = Status.destroyed
    deployment.outputs = {}
    records.save(deployment)
    return deployment


def cloud_status(deployment: Deployment) -> dict[str, Any]:
    """A deployment's record, live health and Worker group as the cloud reports them."""
    entry: dict[str, Any] = {
        "name": deployment.name,
        "cloud": deployment.cloud,
        "app": deployment.app,
        "status": deployment.status,
        "app_url": deployment.outputs.get("app_url"),
        "instance_id": deployment.outputs.get("instance_id"),
        "outputs": deployment.outputs,
        "error": deployment.error,
        "updated_at": deployment.updated_at,
    }
    if deployment.status != Status.applied:
        return entry
    provider = provider_for(deployment.options)
    try:
        entry["instance_state"] = provider.instance_state(
            str(deployment.outputs.get("instance_id"))
        )
        group = deployment.outputs.get("worker_group")
        if group:
            status = provider.group_status(str(group))
            entry["workers"] = {
                "group": group,
                "desired": status.desired,
                "min": status.minimum,
                "max": status.maximum,
                "instances": [{"id": i.id, "state": i.state} for i in status.instances],
            }
    except Exception as exc:  # the record still shows; the cloud's answer is reported as it is
        entry["cloud_error"] = f"{type(exc).__name__}: {exc}"
    # Health is checked only against real deployments: a local stand-in's addresses are fake.
    if deployment.options.get("endpoint_url"):
        entry["health"] = "not checked (endpoint override)"
    elif entry["app_url"]:
        entry["health"] = (
            "healthy" if wait_healthy(str(entry["app_url"]), timeout=3) else "unreachable"
        )
    return entry
