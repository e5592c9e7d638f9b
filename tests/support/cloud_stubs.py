"""Local stand-ins for the Compute Engine and Azure Compute REST APIs, for the real SDK clients.

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

Responses close the connection (HTTP/1.0), so no client keeps a socket to a stopped stub.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

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
        return f"http://{HOST}:{self._server.server_address[1]}"

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
    """The Azure instance metadata service of a VM with no managed identity.

    Point ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` at it so that ``DefaultAzureCredential`` learns
    at once that there is no managed identity, instead of probing 169.254.169.254.
    """

    def not_found(self, what: str) -> Response:
        return 404, {"error": "not_found", "error_description": what}, {}

    def _token(self, query: dict[str, str], body: Any) -> Response:
        return 400, {"error": "invalid_request", "error_description": "Identity not found"}, {}

    routes = [_route("GET", r"/metadata/identity/oauth2/token", _token)]
