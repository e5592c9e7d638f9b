"""Local stand-ins for Google and Azure REST APIs, for the real SDK clients.

Compute Engine and Azure Compute (the providers), Cloud Storage (the GCS blob store), Secret
Manager and Key Vault (the secret stores), and Azure's instance metadata service.

Each stub is an ``http.server`` in a thread on 127.0.0.1 (a free port) speaking just enough of
one API for `pygrid.providers` (group read, instance list, resize, its long-running operation,
instance state), over in-memory state that a resize really changes. Every request is recorded
(method, path, query, headers, JSON body) so tests can assert what the client library sent, and
a test can make the next matching request fail (`StubServer.fail_next`).

The real google-cloud-compute and azure-mgmt-compute clients talk to them:

- Google: ``transport="rest"``, ``client_options=ClientOptions(api_endpoint=stub.url)``,
  anonymous credentials. Long-running operations answer ``status: DONE``.
- Azure: ``ComputeManagementClient(credential, subscription, base_url=stub.url)`` with
  ``authentication_policy=SansIOHTTPPolicy()`` (azure-core refuses bearer tokens over plain
  http). A PATCH answers 200 with an ``Azure-AsyncOperation`` header; the operation is
  ``Succeeded`` by the time it is polled.

- Cloud Storage, Secret Manager: ``client_options={"api_endpoint": stub.url}``, anonymous
  credentials (`GcsStub` speaks bytes, not JSON, and keeps every generation of an object).
- Key Vault: its client refuses plain http, so `KeyVaultStub` serves TLS with a self-signed
  certificate for 127.0.0.1 (``connection_verify=stub.ca_file``) and answers the bearer challenge
  Key Vault clients start with.

Responses close the connection (HTTP/1.0), so no client keeps a socket to a stopped stub.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import ipaddress
import itertools
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

HOST = "127.0.0.1"
Response = tuple[int, Any, dict[str, str]]
Route = tuple[str, re.Pattern[str], Callable[..., Response]]


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request a stub received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclasses.dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: Any


class StubServer:
    """A JSON-over-HTTP server in a thread; subclasses declare `routes`. Use as a context manager."""

    #: Set by stubs serving https: wraps the listening socket.
    ssl_context: ssl.SSLContext | None = None

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread; return the URL."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                stub._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # requests are recorded, not logged

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            # A short poll interval: stop() waits for the serving loop to notice.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
        )
        self._thread.daemon = True
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` while running."""
        assert self._server is not None, "the stub is not running"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self._server.server_address[1]}"

    # --- test helpers ----------------------------------------------------------------------------

    def fail_next(self, method: str, path_pattern: str, status: int, body: Any) -> None:
        """Answer the next ``method`` request whose path matches ``path_pattern`` with an error."""
        with self.lock:
            self._faults.append(_Fault(method, re.compile(path_pattern), status, body))

    def requests_to(self, method: str, path_pattern: str) -> list[Recorded]:
        """The recorded requests with this method whose path matches ``path_pattern``."""
        pattern = re.compile(path_pattern)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    # --- serving ---------------------------------------------------------------------------------

    routes: list[Route] = []

    def not_found(self, what: str) -> Response:
        raise NotImplementedError

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        method = handler.command
        with self.lock:
            self.requests.append(Recorded(method, path, query, dict(handler.headers), body))
            status, payload, headers = self._dispatch(method, path, query, body)
        data = json.dumps(payload).encode() if payload is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Response:
        for fault in self._faults:
            if fault.method == method and fault.path.search(path):
                self._faults.remove(fault)
                return fault.status, fault.body, {}
        for route_method, pattern, action in self.routes:
            match = pattern.match(path)
            if match and route_method == method:
                return action(self, query, body, **match.groupdict())
        return self.not_found(f"{method} {path}")


def _route(method: str, pattern: str, action: Callable[..., Response]) -> Route:
    """A route: requests with ``method`` whose whole path matches ``pattern`` go to ``action``."""
    return method, re.compile(pattern + "$", re.IGNORECASE), action


# --- Compute Engine ------------------------------------------------------------------------------

GCE_API = "https://www.googleapis.com/compute/v1"
_GCE = r"/compute/v1/projects/(?P<project>[^/]+)"
_MIG = _GCE + r"/regions/(?P<region>[^/]+)/instanceGroupManagers/(?P<name>[^/]+)"
_OPERATION = _GCE + r"/regions/(?P<region>[^/]+)/operations/(?P<name>[^/]+)"


@dataclasses.dataclass
class GceInstance:
    """A VM of the stub: ``status`` is a Compute Engine status (RUNNING, TERMINATED, ...)."""

    project: str
    zone: str
    name: str
    status: str = "RUNNING"
    current_action: str = "NONE"
    id: str = dataclasses.field(default_factory=lambda: str(secrets.randbits(63)))

    def self_link(self) -> str:
        return f"{GCE_API}/projects/{self.project}/zones/{self.zone}/instances/{self.name}"

    def path(self) -> str:
        """The id `GCPProvider` reports: ``projects/P/zones/Z/instances/N``."""
        return f"projects/{self.project}/zones/{self.zone}/instances/{self.name}"


@dataclasses.dataclass
class GceGroup:
    """A regional managed instance group of the stub."""

    project: str
    region: str
    name: str
    target_size: int
    labels: dict[str, str]
    zones: list[str]
    members: list[GceInstance] = dataclasses.field(default_factory=list)

    def self_link(self) -> str:
        return (
            f"{GCE_API}/projects/{self.project}/regions/{self.region}"
            f"/instanceGroupManagers/{self.name}"
        )

    def path(self) -> str:
        return f"projects/{self.project}/regions/{self.region}/instanceGroupManagers/{self.name}"


class GceStub(StubServer):
    """Regional managed instance groups, their managed instances, operations, and instances.

    Parameters
    ----------
    page_size : int
        ``listManagedInstances`` answers at most this many per page (and ``maxResults``).
    """

    def __init__(self, page_size: int = 500) -> None:
        super().__init__()
        self.page_size = page_size
        self.groups: dict[tuple[str, str, str], GceGroup] = {}
        self.instances: dict[tuple[str, str, str], GceInstance] = {}
        self.operations: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: Status of the VMs a resize creates.
        self.new_instance_status = "RUNNING"
        self._serial = itertools.count(1)

    def add_group(
        self,
        project: str,
        region: str,
        name: str,
        size: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
        zones: list[str] | None = None,
    ) -> GceGroup:
        """A MIG with ``size`` running VMs; bounds become its allInstancesConfig labels."""
        labels = {}
        if minimum is not None:
            labels["pygrid_workers_min"] = str(minimum)
        if maximum is not None:
            labels["pygrid_workers_max"] = str(maximum)
        group = GceGroup(project, region, name, 0, labels, zones or [f"{region}-a", f"{region}-b"])
        with self.lock:
            self.groups[(project, region, name)] = group
            self._set_size(group, size)
        return group

    def instance(self, path: str) -> GceInstance:
        """The stub's VM with id ``projects/P/zones/Z/instances/N``."""
        _, project, _, zone, _, name = path.split("/")
        return self.instances[(project, zone, name)]

    def _set_size(self, group: GceGroup, size: int) -> None:
        group.target_size = size
        while len(group.members) < size:
            zone = group.zones[len(group.members) % len(group.zones)]
            vm = GceInstance(
                group.project,
                zone,
                f"{group.name}-{secrets.token_hex(2)}{next(self._serial)}",
                status=self.new_instance_status,
            )
            group.members.append(vm)
            self.instances[(vm.project, vm.zone, vm.name)] = vm
        while len(group.members) > size:
            vm = group.members.pop()  # the newest goes first
            del self.instances[(vm.project, vm.zone, vm.name)]

    def not_found(self, what: str) -> Response:
        message = f"The resource '{what}' was not found"
        error = {
            "code": 404,
            "message": message,
            "errors": [{"reason": "notFound", "message": message}],
        }
        return 404, {"error": error}, {}

    def _group(self, project: str, region: str, name: str) -> GceGroup | None:
        return self.groups.get((project, region, name))

    def _get_group(self, query: dict[str, str], body: Any, **where: str) -> Response:
        group = self._group(**where)
        if group is None:
            return self.not_found(f"{_path(where)}")
        return (
            200,
            {
                "kind": "compute#instanceGroupManager",
                "id": str(abs(hash(group.self_link())) % 10**18),
                "name": group.name,
                "region": f"{GCE_API}/projects/{group.project}/regions/{group.region}",
                "selfLink": group.self_link(),
                "baseInstanceName": group.name,
                "instanceTemplate": f"{GCE_API}/projects/{group.project}/global/instanceTemplates/t",
                "targetSize": group.target_size,
                "allInstancesConfig": {"properties": {"labels": group.labels}},
                "distributionPolicy": {
                    "zones": [
                        {"zone": f"{GCE_API}/projects/{group.project}/zones/{zone}"}
                        for zone in group.zones
                    ]
                },
                "status": {"isStable": True},
            },
            {},
        )

    def _list_members(self, query: dict[str, str], body: Any, **where: str) -> Response:
        group = self._group(**where)
        if group is None:
            return self.not_found(_path(where))
        size = min(self.page_size, int(query.get("maxResults") or self.page_size))
        start = int(query.get("pageToken") or 0)
        page = group.members[start : start + size]
        answer: dict[str, Any] = {
            "managedInstances": [
                {
                    "instance": vm.self_link(),
                    "id": vm.id,
                    "name": vm.name,
                    "instanceStatus": vm.status,
                    "currentAction": vm.current_action,
                }
                for vm in page
            ]
        }
        if start + size < len(group.members):
            answer["nextPageToken"] = str(start + size)
        return 200, answer, {}

    def _resize(self, query: dict[str, str], body: Any, **where: str) -> Response:
        group = self._group(**where)
        if group is None:
            return self.not_found(_path(where))
        if "size" not in query:
            return (
                400,
                {"error": {"code": 400, "message": "Required field 'size' not specified"}},
                {},
            )
        self._set_size(group, int(query["size"]))
        name = f"operation-{secrets.token_hex(8)}"
        operation = {
            "kind": "compute#operation",
            "id": str(secrets.randbits(63)),
            "name": name,
            "operationType": "compute.regionInstanceGroupManagers.resize",
            "targetLink": group.self_link(),
            "status": "DONE",
            "progress": 100,
            "region": f"{GCE_API}/projects/{group.project}/regions/{group.region}",
            "selfLink": f"{GCE_API}/projects/{group.project}/regions/{group.region}/operations/{name}",
        }
        self.operations[(group.project, group.region, name)] = operation
        return 200, operation, {}

    def _get_operation(self, query: dict[str, str], body: Any, **where: str) -> Response:
        operation = self.operations.get((where["project"], where["region"], where["name"]))
        return (200, operation, {}) if operation else self.not_found(_path(where))

    def _get_instance(self, query: dict[str, str], body: Any, **where: str) -> Response:
        vm = self.instances.get((where["project"], where["zone"], where["name"]))
        if vm is None:
            return self.not_found(_path(where))
        return (
            200,
            {
                "kind": "compute#instance",
                "id": vm.id,
                "name": vm.name,
                "zone": f"{GCE_API}/projects/{vm.project}/zones/{vm.zone}",
                "status": vm.status,
                "selfLink": vm.self_link(),
            },
            {},
        )

    routes = [
        _route("GET", _MIG, _get_group),
        _route("POST", _MIG + "/listManagedInstances", _list_members),
        _route("POST", _MIG + "/resize", _resize),
        _route("GET", _OPERATION, _get_operation),
        _route("POST", _OPERATION + "/wait", _get_operation),
        _route("GET", _GCE + r"/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", _get_instance),
    ]


def _path(where: dict[str, str]) -> str:
    return "/".join(f"{key}/{value}" for key, value in where.items())


# --- Azure Compute -------------------------------------------------------------------------------

AZURE_API_VERSIONS = frozenset({"2026-04-01"})
_RG = r"/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
_COMPUTE = r"/providers/Microsoft\.Compute"
_VMSS = _RG + _COMPUTE + r"/virtualMachineScaleSets/(?P<name>[^/]+)"
_SET_VM = _VMSS + r"/virtualMachines/(?P<instance>[^/]+)"
_AZURE_OPERATION = (
    r"/subscriptions/(?P<subscription>[^/]+)"
    + _COMPUTE
    + r"/locations/(?P<location>[^/]+)/operations/(?P<operation>[^/]+)"
)


@dataclasses.dataclass
class AzureVm:
    """A VM of the stub: ``power_state`` as in ``PowerState/<state>`` (running, deallocated...)."""

    arm_id: str
    name: str
    instance_id: str | None = None
    power_state: str = "running"
    provisioning_state: str = "Succeeded"

    def statuses(self) -> list[dict[str, str]]:
        return [
            {
                "code": f"ProvisioningState/{self.provisioning_state.lower()}",
                "level": "Info",
                "displayStatus": f"Provisioning {self.provisioning_state.lower()}",
            },
            {
                "code": f"PowerState/{self.power_state}",
                "level": "Info",
                "displayStatus": f"VM {self.power_state}",
            },
        ]


@dataclasses.dataclass
class ScaleSet:
    """A Uniform-orchestration VM scale set of the stub."""

    subscription: str
    resource_group: str
    name: str
    location: str
    capacity: int
    tags: dict[str, str]
    sku_name: str = "Standard_B1s"
    vms: dict[str, AzureVm] = dataclasses.field(default_factory=dict)
    next_instance: int = 0

    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
        )


class AzureStub(StubServer):
    """VM scale sets, their VMs and instance views, standalone VMs, and async operations.

    Parameters
    ----------
    page_size : int
        The scale-set VM list answers at most this many per page (then a ``nextLink``).
    """

    def __init__(self, page_size: int = 100) -> None:
        super().__init__()
        self.page_size = page_size
        self.scale_sets: dict[tuple[str, str, str], ScaleSet] = {}
        self.vms: dict[tuple[str, str, str], AzureVm] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        #: Status the next async operation reports (``Failed`` with an error to test failures).
        self.operation_result: dict[str, Any] = {"status": "Succeeded"}

    def add_scale_set(
        self,
        subscription: str,
        resource_group: str,
        name: str,
        capacity: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
        location: str = "uksouth",
    ) -> ScaleSet:
        """A scale set with ``capacity`` running VMs; bounds become its tags."""
        tags = {"pygrid": "workers"}
        if minimum is not None:
            tags["pygrid_workers_min"] = str(minimum)
        if maximum is not None:
            tags["pygrid_workers_max"] = str(maximum)
        scale_set = ScaleSet(subscription, resource_group, name, location, 0, tags)
        with self.lock:
            self.scale_sets[(subscription.lower(), resource_group.lower(), name.lower())] = (
                scale_set
            )
            self._set_capacity(scale_set, capacity)
        return scale_set

    def add_vm(
        self, subscription: str, resource_group: str, name: str, power_state: str
    ) -> AzureVm:
        """A standalone VM (the app VM); its ARM id is returned in ``.arm_id``."""
        arm_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )
        vm = AzureVm(arm_id, name, power_state=power_state)
        with self.lock:
            self.vms[(subscription.lower(), resource_group.lower(), name.lower())] = vm
        return vm

    def vm(self, arm_id: str) -> AzureVm:
        """The scale-set VM with this ARM id."""
        for scale_set in self.scale_sets.values():
            for vm in scale_set.vms.values():
                if vm.arm_id == arm_id:
                    return vm
        raise KeyError(arm_id)

    def _set_capacity(self, scale_set: ScaleSet, capacity: int) -> None:
        scale_set.capacity = capacity
        while len(scale_set.vms) < capacity:
            instance_id = str(scale_set.next_instance)
            scale_set.next_instance += 1
            scale_set.vms[instance_id] = AzureVm(
                f"{scale_set.arm_id()}/virtualMachines/{instance_id}",
                f"{scale_set.name}_{instance_id}",
                instance_id=instance_id,
            )
        while len(scale_set.vms) > capacity:
            # Azure's default scale-in policy removes the highest instance ids first.
            del scale_set.vms[max(scale_set.vms, key=int)]

    def not_found(self, what: str) -> Response:
        return (
            404,
            {"error": {"code": "ResourceNotFound", "message": f"'{what}' was not found."}},
            {},
        )

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Response:
        if query.get("api-version") not in AZURE_API_VERSIONS:
            message = f"api-version {query.get('api-version')!r} is not supported by the stub"
            return 400, {"error": {"code": "InvalidApiVersionParameter", "message": message}}, {}
        return super()._dispatch(method, path, query, body)

    def _scale_set(self, subscription: str, rg: str, name: str) -> ScaleSet | None:
        return self.scale_sets.get((subscription.lower(), rg.lower(), name.lower()))

    def _scale_set_json(self, scale_set: ScaleSet, provisioning_state: str) -> dict[str, Any]:
        return {
            "id": scale_set.arm_id(),
            "name": scale_set.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": scale_set.location,
            "tags": scale_set.tags,
            "sku": {"name": scale_set.sku_name, "tier": "Standard", "capacity": scale_set.capacity},
            "properties": {
                "provisioningState": provisioning_state,
                "orchestrationMode": "Uniform",
                "upgradePolicy": {"mode": "Manual"},
                "overprovision": False,
            },
        }

    def _vm_json(self, vm: AzureVm, expand: bool) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "provisioningState": vm.provisioning_state,
            "latestModelApplied": True,
        }
        if expand:
            properties["instanceView"] = {"statuses": vm.statuses()}
        return {
            "id": vm.arm_id,
            "name": vm.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": "uksouth",
            "instanceId": vm.instance_id,
            "sku": {"name": "Standard_B1s", "tier": "Standard"},
            "properties": properties,
        }

    def _get_scale_set(self, query: dict[str, str], body: Any, **where: str) -> Response:
        scale_set = self._scale_set(**where)
        if scale_set is None:
            return self.not_found(where["name"])
        return 200, self._scale_set_json(scale_set, "Succeeded"), {}

    def _update_scale_set(self, query: dict[str, str], body: Any, **where: str) -> Response:
        scale_set = self._scale_set(**where)
        if scale_set is None:
            return self.not_found(where["name"])
        return self._apply(scale_set, body or {}, query["api-version"])

    def _apply(self, scale_set: ScaleSet, body: dict[str, Any], api_version: str) -> Response:
        result = dict(self.operation_result)
        if result.get("status") == "Succeeded":
            if "tags" in body:
                scale_set.tags = dict(body["tags"])
            capacity = (body.get("sku") or {}).get("capacity")
            if capacity is not None:
                self._set_capacity(scale_set, int(capacity))
        operation = secrets.token_hex(8)
        self.operations[operation] = {"name": operation, **result}
        status_url = (
            f"{self.url}/subscriptions/{scale_set.subscription}/providers/Microsoft.Compute"
            f"/locations/{scale_set.location}/operations/{operation}?api-version={api_version}"
        )
        headers = {"Azure-AsyncOperation": status_url}
        return 200, self._scale_set_json(scale_set, "Updating"), headers

    def _get_operation(self, query: dict[str, str], body: Any, **where: str) -> Response:
        operation = self.operations.get(where["operation"])
        return (200, operation, {}) if operation else self.not_found(where["operation"])

    def _list_vms(self, query: dict[str, str], body: Any, **where: str) -> Response:
        scale_set = self._scale_set(**where)
        if scale_set is None:
            return self.not_found(where["name"])
        vms = sorted(scale_set.vms.values(), key=lambda vm: int(vm.instance_id or 0))
        start = int(query.get("$skiptoken") or 0)
        page = vms[start : start + self.page_size]
        answer: dict[str, Any] = {
            "value": [self._vm_json(vm, query.get("$expand") == "instanceView") for vm in page]
        }
        if start + self.page_size < len(vms):
            answer["nextLink"] = (
                f"{self.url}{scale_set.arm_id()}/virtualMachines"
                f"?api-version={query['api-version']}&$skiptoken={start + self.page_size}"
                + (f"&$expand={query['$expand']}" if "$expand" in query else "")
            )
        return 200, answer, {}

    def _set_vm(self, where: dict[str, str]) -> AzureVm | None:
        scale_set = self._scale_set(where["subscription"], where["rg"], where["name"])
        return None if scale_set is None else scale_set.vms.get(where["instance"])

    def _get_set_vm(self, query: dict[str, str], body: Any, **where: str) -> Response:
        vm = self._set_vm(where)
        if vm is None:
            return self.not_found(where["instance"])
        return 200, self._vm_json(vm, query.get("$expand") == "instanceView"), {}

    def _get_set_vm_view(self, query: dict[str, str], body: Any, **where: str) -> Response:
        vm = self._set_vm(where)
        if vm is None:
            return self.not_found(where["instance"])
        return 200, {"platformUpdateDomain": 0, "statuses": vm.statuses()}, {}

    def _get_vm_view(self, query: dict[str, str], body: Any, **where: str) -> Response:
        vm = self.vms.get((where["subscription"].lower(), where["rg"].lower(), where["vm"].lower()))
        if vm is None:
            return self.not_found(where["vm"])
        return 200, {"computerName": vm.name, "statuses": vm.statuses()}, {}

    routes = [
        _route("GET", _VMSS, _get_scale_set),
        _route("PATCH", _VMSS, _update_scale_set),
        _route("PUT", _VMSS, _update_scale_set),
        _route("GET", _AZURE_OPERATION, _get_operation),
        _route("GET", _VMSS + "/virtualMachines", _list_vms),
        _route("GET", _SET_VM, _get_set_vm),
        _route("GET", _SET_VM + "/instanceView", _get_set_vm_view),
        _route(
            "GET", _RG + _COMPUTE + r"/virtualMachines/(?P<vm>[^/]+)/instanceView", _get_vm_view
        ),
    ]


# --- Azure instance metadata (managed identity) ---------------------------------------------------


class ImdsStub(StubServer):
    """The Azure instance metadata service of a VM, for ``ManagedIdentityCredential``.

    Point ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` at it so that ``DefaultAzureCredential`` asks it
    at once instead of probing 169.254.169.254. By default the VM has no managed identity; each
    entry of ``identities`` is a user-assigned identity (client id -> the token handed out for
    it), which a request must name by ``client_id``, as a VM with only user-assigned identities
    needs (IMDS cannot choose among them).
    """

    def __init__(self, identities: dict[str, str] | None = None) -> None:
        super().__init__()
        self.identities = dict(identities or {})

    def not_found(self, what: str) -> Response:
        return 404, {"error": "not_found", "error_description": what}, {}

    def _token(self, query: dict[str, str], body: Any) -> Response:
        token = self.identities.get(query.get("client_id", ""))
        if token is None:
            return 400, {"error": "invalid_request", "error_description": "Identity not found"}, {}
        now = int(time.time())
        return (
            200,
            {
                "access_token": token,
                "client_id": query["client_id"],
                "expires_in": "3600",
                "expires_on": str(now + 3600),
                "not_before": str(now),
                "resource": query.get("resource", ""),
                "token_type": "Bearer",
            },
            {},
        )

    routes = [_route("GET", r"/metadata/identity/oauth2/token", _token)]


# --- Cloud Storage (JSON API) --------------------------------------------------------------------


def _crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - GCS's own field


@dataclasses.dataclass
class GcsObject:
    """One generation of an object."""

    bucket: str
    name: str
    generation: int
    data: bytes
    content_type: str
    created: str

    def resource(self) -> dict[str, Any]:
        return {
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "name": self.name,
            "bucket": self.bucket,
            "generation": str(self.generation),
            "metageneration": "1",
            "contentType": self.content_type,
            "size": str(len(self.data)),
            "crc32c": _crc32c(self.data),
            "md5Hash": _md5(self.data),
            "storageClass": "STANDARD",
            "timeCreated": self.created,
            "updated": self.created,
        }


@dataclasses.dataclass
class _Upload:
    bucket: str
    name: str
    content_type: str
    data: bytearray = dataclasses.field(default_factory=bytearray)


class GcsStub(StubServer):
    """Buckets of objects as the GCS JSON API serves them, through the upload and download paths.

    Objects keep every generation, like a bucket with object versioning (the Terraform module's):
    a read pinned to a generation still works after an overwrite or a delete. An upload becomes
    visible only when it completes (a multipart upload, or the last chunk of a resumable one).

    Parameters
    ----------
    page_size : int
        ``objects.list`` answers at most this many per page.
    """

    def __init__(self, page_size: int = 1000) -> None:
        super().__init__()
        self.page_size = page_size
        #: bucket -> object name -> live generation
        self.live: dict[str, dict[str, GcsObject]] = {}
        #: (bucket, name, generation) -> that generation, live or not
        self.generations: dict[tuple[str, str, int], GcsObject] = {}
        self.uploads: dict[str, _Upload] = {}
        #: Permissions ``testIamPermissions`` leaves out of its answer.
        self.denied_permissions: set[str] = set()
        self._generation = itertools.count(1_700_000_000_000_000)

    def add_bucket(self, name: str) -> str:
        with self.lock:
            self.live.setdefault(name, {})
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        """The live objects of ``bucket``: name -> bytes."""
        with self.lock:
            return {name: obj.data for name, obj in self.live[bucket].items()}

    # --- serving: bytes, raw paths (object names hold encoded slashes) ----------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        # Header names as the client spelled them (requests sends some lower-case): normalised.
        method = handler.command
        headers = {name.title(): value for name, value in handler.headers.items()}
        with self.lock:
            self.requests.append(
                Recorded(
                    method, unquote(parts.path), {k: v[0] for k, v in query.items()}, headers, None
                )
            )
            try:
                status, body, extra = self._answer(method, parts.path, query, headers, raw)
            except Exception as exc:  # a stub bug: a 400 fails the test now (a 5xx is retried)
                status, body, extra = self._error(400, f"stub failed: {exc!r}")
        data = (
            body
            if isinstance(body, bytes)
            else json.dumps(body).encode()
            if body is not None
            else b""
        )
        handler.send_response(status)
        if not isinstance(body, bytes):
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, status: int, message: str) -> tuple[int, Any, dict[str, str]]:
        reason = {404: "notFound", 400: "invalid", 412: "conditionNotMet"}.get(status, "error")
        return (
            status,
            {
                "error": {
                    "code": status,
                    "message": message,
                    "errors": [{"reason": reason, "message": message}],
                }
            },
            {},
        )

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
    ) -> tuple[int, Any, dict[str, str]]:
        one = {k: v[0] for k, v in query.items()}
        roots = {"/upload/storage/v1/b/": "upload", "/download/storage/v1/b/": "download"}
        root = next((r for r in roots if path.startswith(r)), "/storage/v1/b/")
        if not path.startswith(root):
            return self._error(404, f"no route {method} {path}")
        kind, rest = roots.get(root, "api"), path[len(root) :]
        bucket, _, rest = rest.partition("/")
        bucket = unquote(bucket)
        if bucket not in self.live:
            return self._error(404, "The specified bucket does not exist.")
        if kind == "upload" and rest == "o" and method == "POST":
            return self._start_upload(bucket, one, headers, raw)
        if kind == "upload" and rest == "o" and method == "PUT":
            return self._upload_chunk(one.get("upload_id", ""), headers, raw)
        if kind == "api" and rest == "iam/testPermissions" and method == "GET":
            granted = [p for p in query.get("permissions", []) if p not in self.denied_permissions]
            return 200, {"kind": "storage#testIamPermissionsResponse", "permissions": granted}, {}
        if kind == "api" and rest == "o" and method == "GET":
            return self._list(bucket, one)
        if kind == "api" and rest == "" and method == "GET":
            # The client fetches this in the background (project number, location) for metrics.
            resource = {"kind": "storage#bucket", "name": bucket, "id": bucket}
            return (
                200,
                {**resource, "projectNumber": "123456789012", "location": "EUROPE-WEST2"},
                {},
            )
        if not rest.startswith("o/"):
            return self._error(404, f"no route {method} {path}")
        name = unquote(rest[2:])
        obj = self._find(bucket, name, one.get("generation"))
        if obj is None:
            return self._error(404, f"No such object: {bucket}/{name}")
        if kind == "download" and method == "GET":
            return self._download(obj, headers)
        if kind == "api" and method == "GET":
            return 200, obj.resource(), {}
        if kind == "api" and method == "DELETE":
            del self.live[bucket][name]  # noncurrent generations stay (versioning)
            return 204, None, {}
        return self._error(404, f"no route {method} {path}")

    def _find(self, bucket: str, name: str, generation: str | None) -> GcsObject | None:
        if generation:
            return self.generations.get((bucket, name, int(generation)))
        return self.live[bucket].get(name)

    def _store(self, bucket: str, name: str, data: bytes, content_type: str) -> GcsObject:
        created = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        obj = GcsObject(bucket, name, next(self._generation), bytes(data), content_type, created)
        self.generations[(bucket, name, obj.generation)] = obj
        self.live[bucket][name] = obj
        return obj

    def _start_upload(
        self, bucket: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        kind = query.get("uploadType")
        if kind == "multipart":
            metadata, data, content_type = _multipart(headers.get("Content-Type", ""), raw)
            obj = self._store(
                bucket, metadata["name"], data, metadata.get("contentType") or content_type
            )
            return 200, obj.resource(), {}
        if kind == "resumable":
            metadata = json.loads(raw or b"{}")
            name = metadata.get("name") or query.get("name")
            upload_id = secrets.token_hex(12)
            content_type = metadata.get("contentType") or headers.get(
                "X-Upload-Content-Type", "application/octet-stream"
            )
            self.uploads[upload_id] = _Upload(bucket, name, content_type)
            location = f"{self.url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=resumable&upload_id={upload_id}"
            return 200, None, {"Location": location}
        return self._error(400, f"uploadType {kind!r} is not served by the stub")

    def _upload_chunk(
        self, upload_id: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        upload = self.uploads.get(upload_id)
        if upload is None:
            return self._error(404, "No such upload session")
        match = re.match(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$", headers.get("Content-Range", ""))
        if match is None:
            return self._error(400, f"bad Content-Range {headers.get('Content-Range')!r}")
        start, _end, total = match.groups()
        if start is not None and int(start) != len(upload.data):
            return self._error(400, f"chunk starts at {start}, not at {len(upload.data)}")
        upload.data += raw
        if total != "*" and len(upload.data) == int(total):
            del self.uploads[upload_id]
            obj = self._store(upload.bucket, upload.name, bytes(upload.data), upload.content_type)
            return 200, obj.resource(), {}
        headers_out = {"Range": f"bytes=0-{len(upload.data) - 1}"} if upload.data else {}
        return 308, None, headers_out

    def _download(self, obj: GcsObject, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        common = {
            "x-goog-generation": str(obj.generation),
            "x-goog-stored-content-length": str(len(obj.data)),
            "Content-Type": obj.content_type,
        }
        wanted = re.match(r"bytes=(\d+)-(\d*)$", headers.get("Range", ""))
        if wanted is None:
            digests = f"crc32c={_crc32c(obj.data)},md5={_md5(obj.data)}"
            return 200, obj.data, {**common, "x-goog-hash": digests}
        start = int(wanted[1])
        end = min(int(wanted[2]) if wanted[2] else len(obj.data) - 1, len(obj.data) - 1)
        if start >= len(obj.data):
            return 416, b"", {"Content-Range": f"bytes */{len(obj.data)}"}
        content_range = f"bytes {start}-{end}/{len(obj.data)}"
        return 206, obj.data[start : end + 1], {**common, "Content-Range": content_range}

    def _list(self, bucket: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        prefix = query.get("prefix", "")
        names = sorted(n for n in self.live[bucket] if n.startswith(prefix))
        size = min(self.page_size, int(query.get("maxResults") or self.page_size))
        start = int(query.get("pageToken") or 0)
        page = names[start : start + size]
        answer: dict[str, Any] = {"kind": "storage#objects"}
        if page:
            answer["items"] = [self.live[bucket][name].resource() for name in page]
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return 200, answer, {}


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], bytes, str]:
    """The JSON metadata and the media of a ``multipart/related`` upload body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, f"not a multipart upload: {content_type!r}"
    boundary = b"--" + match[1].encode()
    parts = [part for part in raw.split(boundary) if part not in (b"", b"--", b"--\r\n", b"\r\n")]
    found = []
    for part in parts:
        head, _, body = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        found.append((head.decode(), body[:-2] if body.endswith(b"\r\n") else body))
    (_, metadata), (media_head, media) = found
    media_type = re.search(r"content-type:\s*([^\r\n]+)", media_head, re.I)
    return json.loads(metadata), media, media_type[1] if media_type else "application/octet-stream"


# --- Secret Manager ------------------------------------------------------------------------------

_SM_SECRET = r"/v1/projects/(?P<project>[^/]+)/secrets/(?P<secret>[^/:]+)"


class SecretManagerStub(StubServer):
    """Secret Manager secrets and their versions (``addVersion``, ``versions/*:access``)."""

    def __init__(self) -> None:
        super().__init__()
        #: (project, secret) -> the payloads of its versions, oldest first
        self.secrets: dict[tuple[str, str], list[bytes]] = {}

    def add_secret(self, project: str, secret: str) -> str:
        """An empty secret, as Terraform creates it; returns its id ``projects/P/secrets/S``."""
        with self.lock:
            self.secrets[(project, secret)] = []
        return f"projects/{project}/secrets/{secret}"

    def not_found(self, what: str) -> Response:
        return 404, {"error": {"code": 404, "message": what, "status": "NOT_FOUND"}}, {}

    def _add_version(self, query: dict[str, str], body: Any, project: str, secret: str) -> Response:
        versions = self.secrets.get((project, secret))
        if versions is None:
            return self.not_found(f"Secret [projects/{project}/secrets/{secret}] not found.")
        data = base64.b64decode(body["payload"]["data"])
        if "dataCrc32c" in body["payload"]:
            import google_crc32c

            if int(body["payload"]["dataCrc32c"]) != google_crc32c.value(data):
                message = "Checksum mismatch"
                return (
                    400,
                    {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
                    {},
                )
        versions.append(data)
        name = f"projects/{project}/secrets/{secret}/versions/{len(versions)}"
        return 200, {"name": name, "state": "ENABLED", "createTime": "2026-01-01T00:00:00Z"}, {}

    def _access(
        self, query: dict[str, str], body: Any, project: str, secret: str, version: str
    ) -> Response:
        versions = self.secrets.get((project, secret))
        number = len(versions or []) if version == "latest" else int(version)
        if not versions or not 1 <= number <= len(versions):
            return self.not_found(
                f"Secret [projects/{project}/secrets/{secret}] not found or has no versions."
            )
        import google_crc32c

        data = versions[number - 1]
        payload = {
            "data": base64.b64encode(data).decode(),
            "dataCrc32c": str(google_crc32c.value(data)),
        }
        name = f"projects/{project}/secrets/{secret}/versions/{number}"
        return 200, {"name": name, "payload": payload}, {}

    routes = [
        _route("POST", _SM_SECRET + ":addVersion", _add_version),
        _route("GET", _SM_SECRET + r"/versions/(?P<version>[^/:]+):access", _access),
    ]


# --- Key Vault (https) ---------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class KeyVaultStub(StubServer):
    """A Key Vault's secrets over https, behind Key Vault's bearer challenge.

    A request without ``Authorization: Bearer <token>`` (``token``) gets the 401 challenge naming
    the tenant and resource, as Key Vault answers a client's first, unauthenticated request.
    Clients trust the stub's self-signed certificate with ``connection_verify=stub.ca_file``.
    """

    def __init__(self, token: str = "vault-token") -> None:
        super().__init__()
        self.token = token
        #: secret name -> its values, oldest first
        self.secrets: dict[str, list[str]] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="pygrid-kv-stub-")
        cert_file, key_file = self_signed(Path(self._folder.name))
        self.ca_file = str(cert_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.ssl_context = context

    def stop(self) -> None:
        super().stop()
        self._folder.cleanup()

    def secret_url(self, name: str) -> str:
        """The versionless secret id, as Terraform outputs it."""
        return f"{self.url}/secrets/{name}"

    def not_found(self, what: str) -> Response:
        return 404, {"error": {"code": "SecretNotFound", "message": what}}, {}

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Response:
        headers = self.requests[-1].headers
        if headers.get("Authorization") != f"Bearer {self.token}":
            challenge = (
                'Bearer authorization="https://login.microsoftonline.com/'
                '00000000-0000-4000-8000-000000000000", resource="https://vault.azure.net"'
            )
            error = {
                "code": "Unauthorized",
                "message": "AKV10000: Request is missing a Bearer token.",
            }
            return 401, {"error": error}, {"WWW-Authenticate": challenge}
        return super()._dispatch(method, path, query, body)

    def _bundle(self, name: str) -> dict[str, Any]:
        version = len(self.secrets[name])
        return {
            "value": self.secrets[name][-1],
            "id": f"{self.url}/secrets/{name}/{version:032x}",
            "contentType": "text/plain",
            "attributes": {"enabled": True, "created": 1767225600, "updated": 1767225600},
        }

    def _get(self, query: dict[str, str], body: Any, name: str) -> Response:
        if not self.secrets.get(name):
            return self.not_found(
                f"A secret with (name/id) {name} was not found in this key vault."
            )
        return 200, self._bundle(name), {}

    def _set(self, query: dict[str, str], body: Any, name: str) -> Response:
        self.secrets.setdefault(name, []).append(body["value"])
        return 200, self._bundle(name), {}

    routes = [
        _route("GET", r"/secrets/(?P<name>[0-9A-Za-z-]+)/?", _get),
        _route("PUT", r"/secrets/(?P<name>[0-9A-Za-z-]+)", _set),
    ]
