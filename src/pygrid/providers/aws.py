"""Worker groups as AWS Auto Scaling groups, through boto3 (extra ``pygrid[aws]``).

A group id is the Auto Scaling group's name (the Terraform output ``worker_group``) or its ARN;
instance ids are EC2 ids (``i-0123456789abcdef0``).

`AWSSecretStore` keeps secrets in Secrets Manager, through the same boto3 session machinery.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pygrid.providers.base import (
    CloudProvider,
    GroupNotFound,
    GroupStatus,
    Instance,
    MissingCredentials,
    ProviderError,
    SecretStore,
    check_desired,
    check_secret_value,
    check_size,
)

__all__ = ["ENDPOINT_ENV", "EC2_STATES", "AWSProvider", "AWSSecretStore"]

#: Environment variable naming an AWS-compatible endpoint (moto, LocalStack) for EC2 and ASG.
ENDPOINT_ENV = "PYGRID_AWS_ENDPOINT_URL"

#: EC2 instance state -> normalised state.
EC2_STATES = {
    "pending": "pending",
    "running": "running",
    "shutting-down": "stopping",
    "stopping": "stopping",
    "stopped": "stopped",
    "terminated": "terminated",
}
# Auto Scaling lifecycle state -> normalised state, for members EC2 does not describe (yet).
_LIFECYCLE_STATES = {
    "Pending": "pending",
    "Pending:Wait": "pending",
    "Pending:Proceed": "pending",
    "InService": "running",
    "Standby": "running",
    "Terminating": "stopping",
    "Terminating:Wait": "stopping",
    "Terminating:Proceed": "stopping",
    "Terminated": "terminated",
    "Detaching": "running",
    "Detached": "running",
    "EnteringStandby": "running",
}
_MISSING_CREDENTIALS = (
    "AWS credentials not found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
    "or run `aws configure`"
)
_MISSING_REGION = (
    "AWS region not set: pass region=..., set AWS_DEFAULT_REGION or AWS_REGION, "
    "or run `aws configure`"
)
# Every AWS partition's region names look like this (us-east-1, us-gov-west-1, cn-north-1, ...).
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
# arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-SUFFIX, or a plain secret name.
_SECRET_ARN = re.compile(
    r"^arn:[\w-]+:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:[\w/+=.@-]+$"
)
_SECRET_NAME = re.compile(r"^[\w/+=.@-]{1,512}$")
# Secrets Manager's answer for a secret that does not exist, or has no current version yet.
_NO_SECRET_VALUE = "ResourceNotFoundException"
_DESCRIBE_BATCH = 100
_T = TypeVar("_T")


class AWSProvider(CloudProvider):
    """Auto Scaling groups, read and resized through boto3.

    Credentials come from boto3's usual chain (environment, ``AWS_PROFILE`` and the shared files,
    SSO, the instance's role). Bounds are the group's ``MinSize`` / ``MaxSize``; a resize is
    ``SetDesiredCapacity`` with ``HonorCooldown=False`` (the Node's autoscaler has its own
    cooldown). Instance states come from EC2 ``DescribeInstances``.

    Parameters
    ----------
    region : str, optional
        Defaults to boto3's configuration (``AWS_DEFAULT_REGION``, ``AWS_REGION``, the profile).
    endpoint_url : str, optional
        An AWS-compatible endpoint for both services; defaults to ``$PYGRID_AWS_ENDPOINT_URL``.
    profile : str, optional
        A named profile of the shared credential files.
    """

    name = "aws"

    def __init__(
        self,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
    ) -> None:
        # boto3 is the `aws` extra: imported only when this provider is used.
        import boto3
        import botocore.exceptions
        import botocore.session

        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        core = botocore.session.Session(profile=profile)
        # Parsing the EC2 API model takes ~0.5 s: every provider shares the parsed models.
        core.register_component("data_loader", _shared_loader())
        self._session = boto3.session.Session(botocore_session=core, region_name=region or None)
        self._botocore_errors = botocore.exceptions
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    @property
    def region(self) -> str | None:
        """The region requests go to, or None if none is configured."""
        try:
            region: str | None = self._session.region_name
        except self._botocore_errors.BotoCoreError:  # a missing profile: check_credentials says
            return None
        return region

    def __repr__(self) -> str:
        return f"AWSProvider(region={self.region!r}, endpoint_url={self.endpoint_url!r})"

    def close(self) -> None:
        """Close the boto3 clients' connection pools."""
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _client(self, service: str) -> Any:
        with self._clients_lock:
            if service not in self._clients:
                from botocore.config import Config

                self._check_region()
                # Bounded: `pygrid status` and the autoscaler must answer even if AWS does not.
                config = Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"mode": "standard", "max_attempts": 3},
                )
                self._clients[service] = self._call(
                    f"set up the {service} client",
                    lambda: self._session.client(
                        service, endpoint_url=self.endpoint_url, config=config
                    ),
                )
            return self._clients[service]

    def _check_region(self) -> None:
        region = self.region
        if not region:
            raise MissingCredentials(_MISSING_REGION)
        if not _REGION.match(region):
            raise MissingCredentials(
                f"invalid AWS region {region!r} (expected a name like 'eu-west-2'): "
                "pass region=..., set AWS_DEFAULT_REGION or AWS_REGION, or run `aws configure`"
            )

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        """Run one boto3 call, translating its errors into the provider's."""
        errors = self._botocore_errors
        try:
            return call()
        except errors.NoCredentialsError as exc:
            raise MissingCredentials(_MISSING_CREDENTIALS) from exc
        except errors.NoRegionError as exc:
            raise MissingCredentials(_MISSING_REGION) from exc
        except errors.ClientError as exc:
            error = exc.response.get("Error", {})
            code = _error_code(exc)
            if code in {"UnrecognizedClientException", "InvalidClientTokenId", "AuthFailure"}:
                raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({code})") from exc
            raise ProviderError(f"AWS refused to {what}: {code}: {error.get('Message')}") from exc
        except errors.ProfileNotFound as exc:
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({exc})") from exc
        except errors.BotoCoreError as exc:
            raise ProviderError(f"could not {what} on AWS: {exc}") from exc

    # --- the contract ----------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """boto3's credential chain must find credentials, and a valid region must be set."""
        try:
            credentials = self._session.get_credentials()
        except self._botocore_errors.BotoCoreError as exc:  # a broken profile or config file
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({exc})") from exc
        if credentials is None:
            raise MissingCredentials(_MISSING_CREDENTIALS)
        self._check_region()

    def _describe_group(self, group: str) -> dict[str, Any]:
        if not isinstance(group, str) or not group:
            raise GroupNotFound(f"no Auto Scaling group {group!r}")
        # An ARN (the Terraform `arn`) names the group after "autoScalingGroupName/".
        name = group.partition(":autoScalingGroupName/")[2] if group.startswith("arn:") else group
        client = self._client("autoscaling")
        response = self._call(
            f"describe Auto Scaling group {group!r}",
            lambda: client.describe_auto_scaling_groups(AutoScalingGroupNames=[name]),
        )
        groups = response.get("AutoScalingGroups", [])
        if not name or not groups:
            raise GroupNotFound(f"no Auto Scaling group {group!r} in {self.region}")
        description: dict[str, Any] = groups[0]
        return description

    def group_status(self, group: str) -> GroupStatus:
        """``DescribeAutoScalingGroups`` for sizes and members, ``DescribeInstances`` for states."""
        description = self._describe_group(group)
        members = description.get("Instances", [])
        ec2_states = self._ec2_states([member["InstanceId"] for member in members])
        instances = [
            Instance(
                member["InstanceId"],
                ec2_states.get(member["InstanceId"])
                or _LIFECYCLE_STATES.get(member.get("LifecycleState", ""), "unknown"),
            )
            for member in members
        ]
        return GroupStatus(
            group=group,
            desired=int(description["DesiredCapacity"]),
            minimum=int(description["MinSize"]),
            maximum=int(description["MaxSize"]),
            instances=sorted(instances, key=lambda instance: instance.id),
        )

    def resize(self, group: str, desired: int) -> None:
        """``SetDesiredCapacity(HonorCooldown=False)`` after checking ``MinSize``/``MaxSize``."""
        desired = check_desired(desired)
        description = self._describe_group(group)
        check_size(group, desired, int(description["MinSize"]), int(description["MaxSize"]))
        if int(description["DesiredCapacity"]) == desired:
            return
        client = self._client("autoscaling")
        self._call(
            f"resize Auto Scaling group {group!r}",
            lambda: client.set_desired_capacity(
                AutoScalingGroupName=description["AutoScalingGroupName"],
                DesiredCapacity=desired,
                HonorCooldown=False,
            ),
        )

    def instance_state(self, instance_id: str) -> str:
        """The EC2 state; an id EC2 no longer knows is ``"terminated"``."""
        if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
            raise ValueError(f"invalid EC2 instance id {instance_id!r} (expected 'i-...')")
        return self._ec2_states([instance_id]).get(instance_id, "terminated")

    def _ec2_states(self, instance_ids: list[str]) -> dict[str, str]:
        """Normalised states of the instances EC2 describes; unknown ids are left out."""
        states: dict[str, str] = {}
        client = self._client("ec2") if instance_ids else None
        for start in range(0, len(instance_ids), _DESCRIBE_BATCH):
            batch = instance_ids[start : start + _DESCRIBE_BATCH]
            reservations = self._describe_instances(client, batch)
            if reservations is None:  # one id EC2 does not know fails the whole call
                reservations = [
                    reservation
                    for instance_id in batch
                    for reservation in self._describe_instances(client, [instance_id]) or []
                ]
            for reservation in reservations:
                for instance in reservation.get("Instances", []):
                    name = instance.get("State", {}).get("Name", "")
                    states[instance["InstanceId"]] = EC2_STATES.get(name, "unknown")
        return states

    def _describe_instances(self, client: Any, instance_ids: list[str]) -> list[Any] | None:
        """The reservations of ``instance_ids``, or None if EC2 does not know one of them."""
        try:
            response = self._call(
                "describe EC2 instances",
                lambda: client.describe_instances(InstanceIds=instance_ids),
            )
        except ProviderError as exc:
            if _error_code(exc.__cause__) == "InvalidInstanceID.NotFound":
                return None
            raise
        reservations: list[Any] = response.get("Reservations", [])
        return reservations


class AWSSecretStore(SecretStore):
    """Secrets in AWS Secrets Manager; a secret is named by its ARN (or its name in the region).

    `write` is ``PutSecretValue`` (a new ``AWSCURRENT`` version of a secret that must exist: the
    Terraform module creates it); `read` is ``GetSecretValue``. The region comes from the ARN
    when none is given, so a Worker needs nothing but the ARN and its instance role.

    Parameters
    ----------
    region, endpoint_url, profile
        As for `AWSProvider`; ``endpoint_url`` defaults to ``$PYGRID_AWS_ENDPOINT_URL``.
    """

    name = "aws"

    def __init__(
        self,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
    ) -> None:
        self._region = region
        self._endpoint_url = endpoint_url
        self._profile = profile
        self._providers: dict[str | None, AWSProvider] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AWSSecretStore(region={self._region!r})"

    def close(self) -> None:
        """Close the Secrets Manager clients."""
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            provider.close()

    def _where(self, secret: str) -> tuple[AWSProvider, Any]:
        """The session (for the ARN's region) and Secrets Manager client for ``secret``."""
        text = secret if isinstance(secret, str) else ""
        match = _SECRET_ARN.match(text)
        if not match and not _SECRET_NAME.match(text):
            raise ValueError(
                f"invalid Secrets Manager secret {secret!r}: expected its ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) or its name"
            )
        region = self._region or (match["region"] if match else None)
        with self._lock:
            if region not in self._providers:
                # The provider holds the session, its shared API models and its error mapping.
                self._providers[region] = AWSProvider(region, self._endpoint_url, self._profile)
            provider = self._providers[region]
        return provider, provider._client("secretsmanager")

    def read(self, secret: str) -> str | None:
        """``GetSecretValue`` of the current version; None when there is none yet."""
        provider, client = self._where(secret)
        try:
            response = provider._call(
                f"read secret {secret!r}", lambda: client.get_secret_value(SecretId=secret)
            )
        except ProviderError as exc:
            if _error_code(exc.__cause__) == _NO_SECRET_VALUE:
                return None
            raise
        value = response.get("SecretString")
        return str(value) if value is not None else None

    def write(self, secret: str, value: str) -> None:
        """``PutSecretValue``: a new current version of the existing secret."""
        provider, client = self._where(secret)
        check_secret_value(value)
        provider._call(
            f"write secret {secret!r}",
            lambda: client.put_secret_value(SecretId=secret, SecretString=value),
        )


@functools.cache
def _shared_loader() -> Any:
    """One botocore data loader (it caches the parsed API models) for every provider."""
    import botocore.loaders

    return botocore.loaders.create_loader(os.environ.get("AWS_DATA_PATH"))


def _error_code(exc: BaseException | None) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` ("" for anything else)."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
