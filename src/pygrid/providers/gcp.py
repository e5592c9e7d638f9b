"""Worker groups as GCP regional managed instance groups, through google-cloud-compute.

Extra ``pygrid[gcp]``. A group id is the MIG's name (project and region from the provider's
options), or its path ``projects/P/regions/R/instanceGroupManagers/NAME`` (the Terraform ``id``)
or self link. Instance ids are paths ``projects/P/zones/Z/instances/NAME`` (the Terraform ``id``
of an instance), self links, or the short form ``ZONE/NAME`` in the provider's project.

GCE calls a stopped VM ``TERMINATED``: it is normalised to ``"stopped"``; ``"terminated"`` is a
VM that no longer exists.

`GCPSecretStore` keeps secrets in Secret Manager, through google-cloud-secret-manager.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

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
    read_bounds,
)

__all__ = ["ENDPOINT_ENV", "GCE_STATES", "SECRETS_ENDPOINT_ENV", "GCPProvider", "GCPSecretStore"]

_LOG = logging.getLogger(__name__)

#: Environment variable naming a Compute Engine API endpoint (a local stub or emulator).
ENDPOINT_ENV = "PYGRID_GCP_ENDPOINT_URL"
#: Environment variable naming a Secret Manager API endpoint (a local stub).
SECRETS_ENDPOINT_ENV = "PYGRID_GCP_SECRETS_ENDPOINT_URL"
#: Compute Engine instance status -> normalised state.
GCE_STATES = {
    "PENDING": "pending",
    "PROVISIONING": "pending",
    "STAGING": "pending",
    "REPAIRING": "pending",
    "RUNNING": "running",
    "PENDING_STOP": "stopping",
    "STOPPING": "stopping",
    "SUSPENDING": "stopping",
    "DEPROVISIONING": "stopping",
    "STOPPED": "stopped",
    "SUSPENDED": "stopped",
    "TERMINATED": "stopped",
}
# What the MIG is doing to a member, for members without a status yet (being created).
_ACTION_STATES = {
    "CREATING": "pending",
    "CREATING_WITHOUT_RETRIES": "pending",
    "RECREATING": "pending",
    "RESTARTING": "pending",
    "STARTING": "pending",
    "RESUMING": "pending",
    "VERIFYING": "pending",
    "REFRESHING": "pending",
    "DELETING": "stopping",
    "ABANDONING": "stopping",
}
_SCOPES = ["https://www.googleapis.com/auth/compute"]
_MISSING_CREDENTIALS = (
    "Google Cloud credentials not found: set GOOGLE_APPLICATION_CREDENTIALS to a service account "
    "key file, or run `gcloud auth application-default login`"
)
_MISSING_PROJECT = (
    "Google Cloud project not set: pass project=..., set GOOGLE_CLOUD_PROJECT, or use "
    "credentials that name one (`gcloud auth application-default set-quota-project PROJECT`)"
)
_MISSING_REGION = (
    "Google Cloud region not set: pass region=..., set CLOUDSDK_COMPUTE_REGION, or name the "
    "group by its path projects/PROJECT/regions/REGION/instanceGroupManagers/NAME"
)
_API_PREFIX = r"^(?:https?://[^/]+/compute/(?:v1|beta)/)?"
_GROUP_PATH = re.compile(
    _API_PREFIX + r"projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)"
    r"/instanceGroupManagers/(?P<name>[^/]+)$"
)
_INSTANCE_PATH = re.compile(
    _API_PREFIX + r"projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)$"
)
_SHORT_INSTANCE = re.compile(r"^(?P<zone>[a-z]+-[a-z]+\d+-[a-z])/(?P<name>[a-z][-a-z0-9]{0,62})$")
_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_SECRET_PATH = re.compile(r"^projects/(?P<project>[^/]+)/secrets/(?P<secret>[\w-]{1,255})$")
_SECRET_ID = re.compile(r"^[\w-]{1,255}$")
_SECRET_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_T = TypeVar("_T")


class _Group(NamedTuple):
    project: str
    region: str
    name: str


class GCPProvider(CloudProvider):
    """Regional managed instance groups, read and resized through the Compute Engine API.

    Bounds: a MIG has none of its own (its size is set by the Node, not by a GCP autoscaler),
    so they are read from the labels ``pygrid_workers_min`` / ``pygrid_workers_max`` of the
    MIG's ``allInstancesConfig``, else from the ``minimum`` / ``maximum`` options.

    Credentials: the ``credentials`` option, else Application Default Credentials
    (``google.auth.default()``); a plain-http ``endpoint_url`` is a local stand-in (stub,
    emulator) and gets anonymous credentials.

    Parameters
    ----------
    project : str, optional
        Defaults to ``$GOOGLE_CLOUD_PROJECT``, then to the credentials' project.
    region : str, optional
        Defaults to ``$CLOUDSDK_COMPUTE_REGION``; not needed for groups named by path.
    endpoint_url : str, optional
        The Compute API root (``http://127.0.0.1:PORT``); defaults to ``$PYGRID_GCP_ENDPOINT_URL``,
        else Google's.
    credentials : google.auth.credentials.Credentials, optional
    minimum, maximum : int, optional
        Bounds of groups whose MIG has no bound labels.
    timeout : float
        Seconds to wait for one API call, and for a resize operation to finish.
    """

    name = "gcp"

    def __init__(
        self,
        project: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: Any = None,
        minimum: int | None = None,
        maximum: int | None = None,
        timeout: float = 120.0,
    ) -> None:
        # google-cloud-compute is the `gcp` extra: imported only when this provider is used.
        import google.api_core.exceptions
        import google.auth.exceptions
        from google.cloud import compute_v1

        self._compute = compute_v1
        self._api_errors = google.api_core.exceptions
        self._auth_errors = google.auth.exceptions
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self._project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self.region = region or os.environ.get("CLOUDSDK_COMPUTE_REGION") or None
        self.minimum = minimum
        self.maximum = maximum
        self.timeout = timeout
        self._credentials = credentials
        self._credentials_project: str | None = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"GCPProvider(project={self._project!r}, region={self.region!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    # --- credentials and clients -----------------------------------------------------------------

    def _resolve_credentials(self) -> Any:
        with self._lock:
            if self._credentials is None:
                if self.endpoint_url and self.endpoint_url.startswith("http://"):
                    from google.auth.credentials import AnonymousCredentials

                    self._credentials = AnonymousCredentials()
                else:
                    import google.auth

                    try:
                        credentials, project = google.auth.default(scopes=_SCOPES)
                    except self._auth_errors.DefaultCredentialsError as exc:
                        raise MissingCredentials(_MISSING_CREDENTIALS) from exc
                    self._credentials, self._credentials_project = credentials, project
            return self._credentials

    @property
    def project(self) -> str | None:
        """The default project: the option, ``$GOOGLE_CLOUD_PROJECT``, or the credentials'."""
        return self._project or self._credentials_project

    def close(self) -> None:
        """Close the API clients' HTTP sessions."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.transport.close()

    def _client(self, kind: str) -> Any:
        credentials = self._resolve_credentials()
        with self._lock:
            if kind not in self._clients:
                from google.api_core.client_options import ClientOptions

                options = (
                    ClientOptions(api_endpoint=self.endpoint_url) if self.endpoint_url else None
                )
                client_class = getattr(self._compute, kind)
                self._clients[kind] = client_class(
                    credentials=credentials, transport="rest", client_options=options
                )
            return self._clients[kind]

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        """Run one API call, translating its errors into the provider's (NotFound passes)."""
        api, auth = self._api_errors, self._auth_errors
        try:
            return call()
        except api.NotFound:
            raise
        except (auth.DefaultCredentialsError, auth.RefreshError) as exc:
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({exc})") from exc
        except (api.Unauthenticated, api.PermissionDenied) as exc:
            raise MissingCredentials(f"Google Cloud refused to {what}: {exc.message}") from exc
        except (api.GoogleAPIError, auth.GoogleAuthError, OSError) as exc:
            # OSError: requests' connection errors, which the REST transport lets through.
            raise ProviderError(f"could not {what} on Google Cloud: {exc}") from exc

    # --- ids ---------------------------------------------------------------------------------------

    def _group(self, group: str) -> _Group:
        if not isinstance(group, str):
            raise GroupNotFound(f"no managed instance group {group!r}")
        match = _GROUP_PATH.match(group)
        if match:
            return _Group(match["project"], match["region"], match["name"])
        if not _NAME.match(group):
            raise GroupNotFound(
                f"no managed instance group {group!r}: expected a MIG name or "
                "projects/PROJECT/regions/REGION/instanceGroupManagers/NAME"
            )
        self._resolve_credentials()  # may tell the project
        if not self.project:
            raise MissingCredentials(_MISSING_PROJECT)
        if not self.region:
            raise MissingCredentials(_MISSING_REGION)
        return _Group(self.project, self.region, group)

    # --- the contract ----------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """Application Default Credentials (or the given ones) must resolve, and a project be set."""
        self._resolve_credentials()
        if not self.project:
            raise MissingCredentials(_MISSING_PROJECT)

    def _get_group(self, group: str) -> tuple[_Group, Any]:
        where = self._group(group)
        client = self._client("RegionInstanceGroupManagersClient")
        try:
            manager = self._call(
                f"read managed instance group {group!r}",
                lambda: client.get(
                    project=where.project,
                    region=where.region,
                    instance_group_manager=where.name,
                    timeout=self.timeout,
                ),
            )
        except self._api_errors.NotFound as exc:
            raise GroupNotFound(
                f"no managed instance group {where.name!r} in project {where.project!r}, "
                f"region {where.region!r}"
            ) from exc
        return where, manager

    def _bounds(self, group: str, manager: Any) -> tuple[int, int]:
        labels = dict(manager.all_instances_config.properties.labels)
        return read_bounds(group, labels, self.minimum, self.maximum)

    def group_status(self, group: str) -> GroupStatus:
        """The MIG's ``targetSize`` and bound labels, and its ``listManagedInstances``."""
        where, manager = self._get_group(group)
        minimum, maximum = self._bounds(group, manager)
        client = self._client("RegionInstanceGroupManagersClient")
        try:
            members = self._call(
                f"list the instances of managed instance group {group!r}",
                lambda: list(
                    client.list_managed_instances(
                        project=where.project,
                        region=where.region,
                        instance_group_manager=where.name,
                        timeout=self.timeout,
                    )
                ),
            )
        except self._api_errors.NotFound as exc:  # deleted between the two calls
            raise GroupNotFound(f"no managed instance group {group!r}") from exc
        instances = [
            Instance(_instance_path(member.instance), _member_state(member)) for member in members
        ]
        return GroupStatus(
            group=group,
            desired=int(manager.target_size),
            minimum=minimum,
            maximum=maximum,
            instances=sorted(instances, key=lambda instance: instance.id),
        )

    def resize(self, group: str, desired: int) -> None:
        """``instanceGroupManagers.resize`` after checking the bounds; waits for the operation."""
        desired = check_desired(desired)
        where, manager = self._get_group(group)
        check_size(group, desired, *self._bounds(group, manager))
        if int(manager.target_size) == desired:
            return
        client = self._client("RegionInstanceGroupManagersClient")
        what = f"resize managed instance group {group!r} to {desired}"
        try:
            operation = self._call(
                what,
                lambda: client.resize(
                    project=where.project,
                    region=where.region,
                    instance_group_manager=where.name,
                    size=desired,
                    timeout=self.timeout,
                ),
            )
        except self._api_errors.NotFound as exc:
            raise GroupNotFound(f"no managed instance group {group!r}") from exc

        def wait() -> None:
            try:
                operation.result(timeout=self.timeout)
            except self._api_errors.NotFound as exc:  # the operation, not the group
                raise ProviderError(f"could not {what}: {exc}") from exc
            except concurrent.futures.TimeoutError:
                # The new size is accepted (group_status reports it); instances converge later.
                _LOG.warning("%s: still running after %s s; not waiting longer", what, self.timeout)

        self._call(what, wait)

    def instance_state(self, instance_id: str) -> str:
        """The instance's status (``instances.get``); a VM that no longer exists is terminated."""
        project, zone, name = self._instance(instance_id)
        client = self._client("InstancesClient")
        try:
            instance = self._call(
                f"read instance {instance_id!r}",
                lambda: client.get(project=project, zone=zone, instance=name, timeout=self.timeout),
            )
        except self._api_errors.NotFound:
            return "terminated"
        return GCE_STATES.get(instance.status, "unknown")

    def _instance(self, instance_id: str) -> tuple[str, str, str]:
        text = instance_id if isinstance(instance_id, str) else ""
        match = _INSTANCE_PATH.match(text)
        if match:
            return match["project"], match["zone"], match["name"]
        match = _SHORT_INSTANCE.match(text)
        if not match:
            raise ValueError(
                f"invalid Compute Engine instance id {instance_id!r}: expected "
                "projects/PROJECT/zones/ZONE/instances/NAME or ZONE/NAME"
            )
        self._resolve_credentials()
        if not self.project:
            raise MissingCredentials(_MISSING_PROJECT)
        return self.project, match["zone"], match["name"]


class GCPSecretStore(SecretStore):
    """Secrets in GCP Secret Manager, named ``projects/P/secrets/S`` (the Terraform ``id``).

    `write` adds a version (``secretVersionAdder`` is all it needs); `read` accesses
    ``versions/latest``. Payloads carry a CRC32C both ways, so a corrupted value is an error,
    never a wrong token. The secret must exist (the Terraform module creates it, empty).

    Parameters
    ----------
    project : str, optional
        Project of secrets named by their short id; defaults to ``$GOOGLE_CLOUD_PROJECT``.
    endpoint_url : str, optional
        The API root; defaults to ``$PYGRID_GCP_SECRETS_ENDPOINT_URL``, else Google's. A
        plain-http endpoint (a local stub) gets anonymous credentials.
    credentials : google.auth.credentials.Credentials, optional
        Defaults to Application Default Credentials (on a VM: its service account).
    timeout : float
        Seconds to wait for one API call.
    """

    name = "gcp"

    def __init__(
        self,
        project: str | None = None,
        endpoint_url: str | None = None,
        credentials: Any = None,
        timeout: float = 30.0,
    ) -> None:
        # google-cloud-secret-manager is the `gcp` extra: imported only when the store is used.
        import google.api_core.exceptions
        import google.auth.exceptions

        self._api_errors = google.api_core.exceptions
        self._auth_errors = google.auth.exceptions
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self.endpoint_url = endpoint_url or os.environ.get(SECRETS_ENDPOINT_ENV) or None
        self.timeout = timeout
        self._credentials = credentials
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GCPSecretStore(project={self.project!r}, endpoint_url={self.endpoint_url!r})"

    def close(self) -> None:
        """Close the API client's HTTP session."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    def _secret(self, secret: str) -> str:
        text = secret if isinstance(secret, str) else ""
        if _SECRET_PATH.match(text):
            return text
        if not _SECRET_ID.match(text):
            raise ValueError(
                f"invalid Secret Manager secret {secret!r}: expected projects/PROJECT/secrets/ID "
                "or an ID"
            )
        if not self.project:
            raise MissingCredentials(_MISSING_PROJECT)
        return f"projects/{self.project}/secrets/{text}"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.api_core.client_options import ClientOptions
                from google.cloud import secretmanager

                credentials = self._credentials
                stub = bool(self.endpoint_url and self.endpoint_url.startswith("http://"))
                if credentials is None and stub:
                    from google.auth.credentials import AnonymousCredentials

                    credentials = AnonymousCredentials()
                if credentials is None:
                    import google.auth

                    try:
                        credentials, _ = google.auth.default(scopes=_SECRET_SCOPES)
                    except self._auth_errors.DefaultCredentialsError as exc:
                        raise MissingCredentials(_MISSING_CREDENTIALS) from exc
                options = (
                    ClientOptions(api_endpoint=self.endpoint_url) if self.endpoint_url else None
                )
                # REST, not gRPC: one small call at start-up; no channel to keep alive.
                self._client = secretmanager.SecretManagerServiceClient(
                    credentials=credentials, transport="rest", client_options=options
                )
            return self._client

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        api, auth = self._api_errors, self._auth_errors
        try:
            return call()
        except api.NotFound:
            raise
        except (auth.DefaultCredentialsError, auth.RefreshError) as exc:
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({exc})") from exc
        except (api.Unauthenticated, api.PermissionDenied) as exc:
            raise MissingCredentials(f"Google Cloud refused to {what}: {exc.message}") from exc
        except (api.GoogleAPIError, auth.GoogleAuthError, OSError) as exc:
            raise ProviderError(f"could not {what} on Google Cloud: {exc}") from exc

    def read(self, secret: str) -> str | None:
        """``versions/latest:access``; None when the secret has no (enabled) version yet."""
        name = self._secret(secret) + "/versions/latest"
        client = self._get_client()
        try:
            response = self._call(
                f"read secret {secret!r}",
                lambda: client.access_secret_version(name=name, timeout=self.timeout),
            )
        except self._api_errors.NotFound:
            return None
        data = bytes(response.payload.data)
        expected = response.payload.data_crc32c
        if expected is not None and expected != _crc32c(data):
            raise ProviderError(f"secret {secret!r} arrived corrupted (CRC32C mismatch)")
        return data.decode("utf-8")

    def write(self, secret: str, value: str) -> None:
        """``addVersion`` with the value and its CRC32C."""
        parent = self._secret(secret)
        data = check_secret_value(value).encode("utf-8")
        client = self._get_client()
        what = f"write secret {secret!r}"
        try:
            self._call(
                what,
                lambda: client.add_secret_version(
                    parent=parent,
                    payload={"data": data, "data_crc32c": _crc32c(data)},
                    timeout=self.timeout,
                ),
            )
        except self._api_errors.NotFound as exc:
            raise ProviderError(
                f"could not {what}: no such secret (the Terraform module creates it)"
            ) from exc


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _instance_path(url: str) -> str:
    """``projects/P/zones/Z/instances/N`` from an instance's self link."""
    match = _INSTANCE_PATH.match(url)
    return (
        f"projects/{match['project']}/zones/{match['zone']}/instances/{match['name']}"
        if match
        else url
    )


def _member_state(member: Any) -> str:
    """A managed instance's state: being removed is "stopping" whatever its VM still does."""
    action = member.current_action
    if action in {"DELETING", "ABANDONING"}:
        return "stopping"
    if member.instance_status:
        return GCE_STATES.get(member.instance_status, "unknown")
    return _ACTION_STATES.get(action, "unknown")
