"""Worker groups as Azure VM scale sets (Uniform orchestration), through azure-mgmt-compute.

Extra ``pygrid[azure]``. A group id is ``RESOURCE_GROUP/SCALE_SET`` or the scale set's ARM id
``/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/NAME``
(the Terraform ``id``). Instance ids are ARM ids of scale-set VMs (``.../virtualMachines/3``, as
`AzureProvider.group_status` reports them) or of standalone VMs (the app VM), or the short form
``RESOURCE_GROUP/SCALE_SET/INSTANCE_ID``.

`AzureSecretStore` keeps secrets in Key Vault, through azure-keyvault-secrets.

Credentials: `default_credential`, i.e. ``DefaultAzureCredential``. On a VM with a
*user-assigned* managed identity (the Terraform module gives the app VM and the Workers one each)
``$AZURE_CLIENT_ID`` must hold that identity's client id: the module writes it into the VMs'
environment files, and `default_credential` asks the instance metadata service for that identity.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
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

__all__ = [
    "ENDPOINT_ENV",
    "POWER_STATES",
    "AzureProvider",
    "AzureSecretStore",
    "StaticTokenCredential",
    "default_credential",
]

_LOG = logging.getLogger(__name__)

#: Environment variable naming an Azure Resource Manager endpoint (a local stub, Azure Stack).
ENDPOINT_ENV = "PYGRID_AZURE_ENDPOINT_URL"
#: Azure VM power state (``PowerState/<state>`` in the instance view) -> normalised state.
POWER_STATES = {
    "starting": "pending",
    "running": "running",
    "stopping": "stopping",
    "deallocating": "stopping",
    "stopped": "stopped",
    "deallocated": "stopped",
}
# Provisioning state (``ProvisioningState/<state>``) -> normalised state, where it decides.
_PROVISIONING_STATES = {"creating": "pending", "deleting": "stopping"}
_DEFAULT_SCOPE = "https://management.azure.com/.default"
_MISSING_SUBSCRIPTION = (
    "Azure subscription not set: set AZURE_SUBSCRIPTION_ID or pass subscription_id=... "
    "(`az account show --query id -o tsv` prints yours)"
)
_MISSING_CREDENTIALS = (
    "Azure credentials not found: set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET "
    "(a service principal), use a managed identity, or run `az login`"
)
_ARM = r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/"
_GROUP_ID = re.compile(_ARM + r"virtualMachineScaleSets/(?P<name>[^/]+)$", re.IGNORECASE)
_SET_VM_ID = re.compile(
    _ARM + r"virtualMachineScaleSets/(?P<name>[^/]+)/virtualMachines/(?P<instance>[^/]+)$",
    re.IGNORECASE,
)
_VM_ID = re.compile(_ARM + r"virtualMachines/(?P<vm>[^/]+)$", re.IGNORECASE)
_SEGMENT = r"[A-Za-z0-9_.()-]{1,90}"
_SHORT_GROUP = re.compile(rf"^(?P<rg>{_SEGMENT})/(?P<name>{_SEGMENT})$")
_SHORT_SET_VM = re.compile(rf"^(?P<rg>{_SEGMENT})/(?P<name>{_SEGMENT})/(?P<instance>\d+)$")
# https://VAULT.vault.azure.net/secrets/NAME (the Terraform versionless_id), any vault host.
_SECRET_URL = re.compile(
    r"^(?P<vault>https://[A-Za-z0-9.-]+(?::\d+)?)/secrets/(?P<name>[0-9A-Za-z-]{1,127})/?$"
)
_T = TypeVar("_T")


class StaticTokenCredential:
    """A credential handing out one fixed token: for a local plain-http stand-in of ARM only."""

    def __init__(self, token: str = "pygrid-local-stub") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        """An ``AccessToken`` valid for an hour."""
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


def default_credential() -> Any:
    """``DefaultAzureCredential`` for this machine, honouring ``$AZURE_CLIENT_ID``.

    The environment's service principal, a workload identity, the VM's managed identity (the
    user-assigned one whose client id ``$AZURE_CLIENT_ID`` holds, else the system-assigned one),
    or ``az login``.
    """
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=os.environ.get("AZURE_CLIENT_ID") or None
    )


class _Group(NamedTuple):
    subscription: str
    resource_group: str
    name: str


class AzureProvider(CloudProvider):
    """VM scale sets, read and resized through the Azure Resource Manager compute API.

    Bounds: a scale set has none of its own (the Node is its autoscaler), so they are read from
    its tags ``pygrid_workers_min`` / ``pygrid_workers_max``, else from the ``minimum`` /
    ``maximum`` options. A resize PATCHes the scale set's ``sku.capacity`` and waits (up to
    ``timeout``) for the long-running operation.

    Credentials: the ``credential`` option, else ``DefaultAzureCredential`` (environment
    service principal, workload or managed identity, ``az login``). A plain-http
    ``endpoint_url`` is a local stand-in (stub): it gets a `StaticTokenCredential` and no
    Authorization header, since azure-core refuses bearer tokens over plain http.

    Parameters
    ----------
    subscription_id : str, optional
        Defaults to ``$AZURE_SUBSCRIPTION_ID``; ARM ids name their own.
    endpoint_url : str, optional
        The ARM endpoint; defaults to ``$PYGRID_AZURE_ENDPOINT_URL``, else Azure's public cloud.
    credential : azure.core.credentials.TokenCredential, optional
    minimum, maximum : int, optional
        Bounds of scale sets without bound tags.
    polling_interval : float, optional
        Seconds between polls of a long-running operation when the service does not say
        (the SDK's default is 30).
    timeout : float
        Seconds to wait for a resize to finish; it is accepted before that in any case.
    """

    name = "azure"

    def __init__(
        self,
        subscription_id: str | None = None,
        endpoint_url: str | None = None,
        credential: Any = None,
        minimum: int | None = None,
        maximum: int | None = None,
        polling_interval: float | None = None,
        timeout: float = 600.0,
    ) -> None:
        # azure-mgmt-compute is the `azure` extra: imported only when this provider is used.
        import azure.core.exceptions
        from azure.mgmt.compute import ComputeManagementClient

        self._client_class = ComputeManagementClient
        self._errors = azure.core.exceptions
        self.subscription_id = subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID") or None
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.minimum = minimum
        self.maximum = maximum
        self.polling_interval = polling_interval
        self.timeout = timeout
        self._stub = bool(self.endpoint_url and self.endpoint_url.startswith("http://"))
        self._given_credential = credential
        self._credential = credential
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"AzureProvider(subscription_id={self.subscription_id!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    # --- credentials and clients -----------------------------------------------------------------

    def _get_credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                if self._stub:
                    self._credential = StaticTokenCredential()
                else:
                    self._credential = default_credential()
            return self._credential

    def _scope(self) -> str:
        if self.endpoint_url and not self._stub:
            return self.endpoint_url.rstrip("/") + "/.default"
        return _DEFAULT_SCOPE

    def close(self) -> None:
        """Close the management clients' HTTP sessions (and a credential this provider made)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            credential, self._credential = self._credential, self._given_credential
        for client in clients:
            client.close()
        if credential is not self._given_credential and hasattr(credential, "close"):
            credential.close()

    def _client(self, subscription: str) -> Any:
        credential = self._get_credential()
        with self._lock:
            if subscription not in self._clients:
                options: dict[str, Any] = {}
                if self.endpoint_url:
                    options["base_url"] = self.endpoint_url
                    options["credential_scopes"] = [self._scope()]
                if self._stub:
                    from azure.core.pipeline.policies import SansIOHTTPPolicy

                    options["authentication_policy"] = SansIOHTTPPolicy()
                if self.polling_interval is not None:
                    options["polling_interval"] = self.polling_interval
                self._clients[subscription] = self._client_class(
                    credential, subscription, **options
                )
            return self._clients[subscription]

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        """Run one API call, translating its errors into the provider's (not-found passes)."""
        errors = self._errors
        try:
            return call()
        except errors.ResourceNotFoundError:
            raise
        except errors.ClientAuthenticationError as exc:  # also CredentialUnavailableError
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({_first_line(exc)})") from exc
        except errors.HttpResponseError as exc:
            if exc.status_code == 404:  # some operations map 404 to the plain error
                raise errors.ResourceNotFoundError(response=exc.response) from exc
            if exc.status_code == 403:
                raise MissingCredentials(
                    f"Azure refused to {what}: {_first_line(exc)}; the identity needs the "
                    "'Virtual Machine Contributor' role on the scale set"
                ) from exc
            raise ProviderError(f"Azure refused to {what}: {_first_line(exc)}") from exc
        except errors.AzureError as exc:
            raise ProviderError(f"could not {what} on Azure: {_first_line(exc)}") from exc

    # --- ids ---------------------------------------------------------------------------------------

    def _subscription(self) -> str:
        if not self.subscription_id:
            raise MissingCredentials(_MISSING_SUBSCRIPTION)
        return self.subscription_id

    def _group(self, group: str) -> _Group:
        text = group if isinstance(group, str) else ""
        match = _GROUP_ID.match(text)
        if match:
            return _Group(match["subscription"], match["rg"], match["name"])
        match = _SHORT_GROUP.match(text)
        if not match:
            raise GroupNotFound(
                f"no VM scale set {group!r}: expected RESOURCE_GROUP/SCALE_SET or the scale "
                "set's ARM id"
            )
        return _Group(self._subscription(), match["rg"], match["name"])

    # --- the contract ----------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """A subscription must be set and the credential must produce a token for ARM."""
        self._subscription()
        credential = self._get_credential()
        try:
            credential.get_token(self._scope())
        except self._errors.ClientAuthenticationError as exc:
            raise MissingCredentials(_MISSING_CREDENTIALS) from exc

    def _get_group(self, group: str) -> tuple[_Group, Any]:
        where = self._group(group)
        client = self._client(where.subscription)
        try:
            scale_set = self._call(
                f"read VM scale set {group!r}",
                lambda: client.virtual_machine_scale_sets.get(where.resource_group, where.name),
            )
        except self._errors.ResourceNotFoundError as exc:
            raise GroupNotFound(
                f"no VM scale set {where.name!r} in resource group {where.resource_group!r}"
            ) from exc
        return where, scale_set

    def _bounds(self, group: str, scale_set: Any) -> tuple[int, int]:
        return read_bounds(group, dict(scale_set.tags or {}), self.minimum, self.maximum)

    def group_status(self, group: str) -> GroupStatus:
        """The scale set's ``sku.capacity`` and bound tags; its VMs with their instance views."""
        where, scale_set = self._get_group(group)
        minimum, maximum = self._bounds(group, scale_set)
        client = self._client(where.subscription)
        try:
            machines = self._call(
                f"list the VMs of scale set {group!r}",
                lambda: list(
                    client.virtual_machine_scale_set_vms.list(
                        where.resource_group, where.name, expand="instanceView"
                    )
                ),
            )
        except self._errors.ResourceNotFoundError as exc:  # deleted between the two calls
            raise GroupNotFound(f"no VM scale set {group!r}") from exc
        instances = [
            Instance(
                machine.id,
                _state(_status_codes(machine.instance_view), machine.provisioning_state),
            )
            for machine in machines
        ]
        return GroupStatus(
            group=group,
            desired=int(scale_set.sku.capacity or 0),
            minimum=minimum,
            maximum=maximum,
            instances=sorted(instances, key=lambda instance: instance.id),
        )

    def resize(self, group: str, desired: int) -> None:
        """PATCH the scale set's ``sku.capacity`` after checking the bounds."""
        from azure.mgmt.compute.models import VirtualMachineScaleSetUpdate

        desired = check_desired(desired)
        where, scale_set = self._get_group(group)
        check_size(group, desired, *self._bounds(group, scale_set))
        if int(scale_set.sku.capacity or 0) == desired:
            return
        # The whole sku (name, tier) with the new capacity, as `az vmss scale` sends it.
        sku = scale_set.sku
        sku.capacity = desired
        client = self._client(where.subscription)
        what = f"resize VM scale set {group!r} to {desired}"

        def update() -> None:
            poller = client.virtual_machine_scale_sets.begin_update(
                where.resource_group, where.name, VirtualMachineScaleSetUpdate(sku=sku)
            )
            poller.result(timeout=self.timeout)
            if not poller.done():
                # The new capacity is accepted (group_status reports it); VMs converge later.
                _LOG.warning("%s: still running after %s s; not waiting longer", what, self.timeout)

        try:
            self._call(what, update)
        except self._errors.ResourceNotFoundError as exc:
            raise GroupNotFound(f"no VM scale set {group!r}") from exc

    def instance_state(self, instance_id: str) -> str:
        """The VM's power state from its instance view; a VM that no longer exists is terminated."""
        text = instance_id if isinstance(instance_id, str) else ""
        read: Callable[[], Any]
        if match := _SET_VM_ID.match(text) or _SHORT_SET_VM.match(text):
            subscription = match.groupdict().get("subscription") or self._subscription()
            rg, name, instance = match["rg"], match["name"], match["instance"]
            machines = self._client(subscription).virtual_machine_scale_set_vms
            read = functools.partial(machines.get_instance_view, rg, name, instance)
        elif match := _VM_ID.match(text):
            rg, vm = match["rg"], match["vm"]
            machines = self._client(match["subscription"]).virtual_machines
            read = functools.partial(machines.instance_view, rg, vm)
        else:
            raise ValueError(
                f"invalid Azure VM id {instance_id!r}: expected the ARM id of a VM or of a "
                "scale-set VM, or RESOURCE_GROUP/SCALE_SET/INSTANCE_ID"
            )
        try:
            view = self._call(f"read VM {instance_id!r}", read)
        except self._errors.ResourceNotFoundError:
            return "terminated"
        return _state(_status_codes(view), None)


class AzureSecretStore(SecretStore):
    """Secrets in Azure Key Vault, named by their versionless URL (the Terraform output form).

    ``https://VAULT.vault.azure.net/secrets/NAME``: `write` is ``set_secret`` (a new version; it
    creates the secret on first write, since Terraform cannot create an empty one), `read` is
    ``get_secret``. The module's vault holds this one secret; its access policies give the app
    VM's identity Get and Set and the Workers' identity Get.

    Parameters
    ----------
    credential : azure.core.credentials.TokenCredential, optional
        Defaults to `default_credential` (a managed identity on the VMs).
    **client_options
        Passed to ``SecretClient`` (``connection_verify``, ``verify_challenge_resource``, ...).
    """

    name = "azure"

    def __init__(self, credential: Any = None, **client_options: Any) -> None:
        import azure.core.exceptions

        self._errors = azure.core.exceptions
        self._given_credential = credential
        self._credential = credential
        self._client_options = client_options
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the Key Vault clients (and a credential this store made)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            credential, self._credential = self._credential, self._given_credential
        for client in clients:
            client.close()
        if credential is not self._given_credential and hasattr(credential, "close"):
            credential.close()

    def _where(self, secret: str) -> tuple[Any, str]:
        match = _SECRET_URL.match(secret if isinstance(secret, str) else "")
        if not match:
            raise ValueError(
                f"invalid Key Vault secret {secret!r}: expected its versionless URL "
                "https://VAULT.vault.azure.net/secrets/NAME"
            )
        vault = match["vault"].lower()
        with self._lock:
            if self._credential is None:
                self._credential = default_credential()
            if vault not in self._clients:
                from azure.keyvault.secrets import SecretClient

                self._clients[vault] = SecretClient(vault, self._credential, **self._client_options)
            return self._clients[vault], match["name"]

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        errors = self._errors
        try:
            return call()
        except errors.ResourceNotFoundError:
            raise
        except errors.ClientAuthenticationError as exc:
            raise MissingCredentials(f"{_MISSING_CREDENTIALS} ({_first_line(exc)})") from exc
        except errors.HttpResponseError as exc:
            if exc.status_code == 403:
                raise MissingCredentials(
                    f"Key Vault refused to {what}: {_first_line(exc)}; the identity needs an "
                    "access policy on the vault (Get to read, Set to write)"
                ) from exc
            raise ProviderError(f"Key Vault refused to {what}: {_first_line(exc)}") from exc
        except errors.AzureError as exc:
            raise ProviderError(f"could not {what} on Azure: {_first_line(exc)}") from exc

    def read(self, secret: str) -> str | None:
        """``get_secret`` (the current version); None when there is no such secret yet."""
        client, name = self._where(secret)
        try:
            found = self._call(f"read secret {secret!r}", lambda: client.get_secret(name))
        except self._errors.ResourceNotFoundError:
            return None
        return str(found.value) if found.value is not None else None

    def write(self, secret: str, value: str) -> None:
        """``set_secret``: a new current version (the secret is created by the first one)."""
        client, name = self._where(secret)
        check_secret_value(value)
        self._call(
            f"write secret {secret!r}",
            lambda: client.set_secret(name, value, content_type="text/plain"),
        )


def _status_codes(view: Any) -> list[str]:
    """The status codes of an instance view (``PowerState/running``, ...), lower-cased."""
    statuses: Iterable[Any] = getattr(view, "statuses", None) or []
    return [str(status.code).lower() for status in statuses if status.code]


def _state(codes: list[str], provisioning_state: str | None) -> str:
    """Normalise an Azure VM from its instance-view status codes and provisioning state."""
    provisioning = [
        code.partition("/")[2] for code in codes if code.startswith("provisioningstate/")
    ]
    if provisioning_state:
        provisioning.append(provisioning_state.lower())
    if "deleting" in provisioning:
        return "stopping"
    for code in codes:
        if code.startswith("powerstate/"):
            return POWER_STATES.get(code.partition("/")[2], "unknown")
    for state in provisioning:
        if state in _PROVISIONING_STATES:
            return _PROVISIONING_STATES[state]
    return "unknown"


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
