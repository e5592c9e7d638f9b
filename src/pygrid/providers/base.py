"""The cloud provider contract: what every Worker-group backend MUST do, and the types they share.

A *Worker group* is the set of Worker machines of one Node that the cloud keeps at a desired size:
an AWS Auto Scaling group, a GCP regional managed instance group, an Azure VM scale set, or, for
the local reference implementation, a set of local processes. The Node resizes it from its job
queue depth (`pygrid.providers.autoscale`) and ``pygrid status`` reads it, both through this
interface only.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Self

__all__ = [
    "BOUND_LABELS",
    "STATES",
    "CloudProvider",
    "GroupNotFound",
    "GroupStatus",
    "Instance",
    "MAX_SECRET_BYTES",
    "MissingCredentials",
    "ProviderError",
    "SecretStore",
    "SizeOutOfBounds",
    "check_desired",
    "check_secret_value",
    "check_size",
    "read_bounds",
]

#: Every state `CloudProvider.instance_state` and `Instance.state` may take. "stopped" is a
#: machine that exists but does not run (and can be started again); "terminated" is gone for good,
#: including a machine the cloud no longer knows about because it was deleted.
STATES: Final = ("pending", "running", "stopping", "stopped", "terminated", "unknown")

#: Tags (Azure) / labels (GCP) on the group that carry its bounds where the cloud's group has no
#: native minimum and maximum; they mirror the Terraform inputs ``workers_min`` / ``workers_max``.
BOUND_LABELS: Final = ("pygrid_workers_min", "pygrid_workers_max")

#: Largest secret value a `SecretStore` takes, in UTF-8 bytes: Key Vault's limit (25 KiB), the
#: smallest of the three clouds', so a value that fits one store fits them all.
MAX_SECRET_BYTES: Final = 25 * 1024


class ProviderError(Exception):
    """Base class of the errors a provider raises; cloud SDK errors are chained to one of these."""


class MissingCredentials(ProviderError):
    """Credentials or a setting needed to reach the cloud are missing or invalid.

    The message names exactly what is missing and how to provide it (environment variables,
    files, or the cloud's CLI login), because it is shown to the user as it is.
    """


class GroupNotFound(ProviderError, LookupError):
    """No Worker group has this id (or the id cannot name one)."""


class SizeOutOfBounds(ProviderError, ValueError):
    """A resize asked for a size outside the group's ``[minimum, maximum]``."""


@dataclasses.dataclass(frozen=True)
class Instance:
    """One machine (or local process) of a Worker group."""

    #: Provider-specific id, accepted back by `CloudProvider.instance_state`.
    id: str
    #: One of `STATES`.
    state: str


@dataclasses.dataclass(frozen=True)
class GroupStatus:
    """What a Worker group looks like now: its sizes and its current members."""

    #: The group id as given to `CloudProvider.group_status`.
    group: str
    #: The size the group is asked to have (instances may still be converging to it).
    desired: int
    minimum: int
    maximum: int
    #: The machines that are members of the group now, sorted by id.
    instances: list[Instance]

    def count(self, *states: str) -> int:
        """Number of instances in any of ``states`` (all of them when none is given)."""
        return sum(1 for instance in self.instances if not states or instance.state in states)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``pygrid status --format json``)."""
        return dataclasses.asdict(self)


def check_desired(desired: object) -> int:
    """Return ``desired`` if it is an int that could be a size, else raise `TypeError`."""
    if isinstance(desired, bool) or not isinstance(desired, int):
        raise TypeError(f"the desired size must be an int, not {type(desired).__name__}")
    return desired


def check_size(group: str, desired: int, minimum: int, maximum: int) -> None:
    """Raise `SizeOutOfBounds` unless ``minimum <= desired <= maximum``."""
    if not minimum <= desired <= maximum:
        raise SizeOutOfBounds(
            f"cannot resize Worker group {group!r} to {desired}: "
            f"its size must stay within [{minimum}, {maximum}]"
        )


def read_bounds(
    group: str, labels: Mapping[str, str], minimum: int | None, maximum: int | None
) -> tuple[int, int]:
    """The group's ``(minimum, maximum)`` from its `BOUND_LABELS`, else from the given defaults.

    For clouds whose groups have no native bounds (GCP managed instance groups, Azure scale
    sets). A missing minimum is 0; a missing maximum is an error, since resizing could not be
    checked.
    """
    found: list[int | None] = []
    for label, default in zip(BOUND_LABELS, (minimum, maximum), strict=True):
        text = labels.get(label)
        if text is None:
            found.append(default)
            continue
        try:
            found.append(int(text))
        except ValueError:
            raise ProviderError(
                f"Worker group {group!r} has an invalid {label} label/tag: {text!r}"
            ) from None
    low, high = found
    if high is None:
        raise ProviderError(
            f"the maximum size of Worker group {group!r} is unknown: give the group a "
            f"{BOUND_LABELS[1]!r} label (GCP, on allInstancesConfig) or tag (Azure), as the "
            "Terraform modules do, or pass maximum=... to the provider"
        )
    low = 0 if low is None else low
    if not 0 <= low <= high:
        raise ProviderError(f"Worker group {group!r} has invalid bounds [{low}, {high}]")
    return low, high


class CloudProvider(abc.ABC):
    """A cloud's (or the local machine's) Worker groups, seen through one small interface.

    Implementations are registered by name in ``pygrid.providers.PROVIDERS`` and built by
    `pygrid.providers.get_provider`. Every implementation MUST:

    - import its cloud SDK lazily (in ``__init__`` or later, never at module level), so that
      importing ``pygrid.providers`` or another provider does not need it;
    - not touch the network in ``__init__``, so a provider can be built (and
      `check_credentials` called) without credentials;
    - raise only `ProviderError` subclasses for failures of the cloud or its SDK, chaining the
      original error (``raise ... from exc``); `TypeError` / `ValueError` for bad arguments;
    - raise `MissingCredentials` from any method when credentials turn out to be missing;
    - be usable from several threads (the Node's autoscaler and its status route).

    The local provider (`pygrid.providers.local.LocalProvider`) is the reference implementation:
    when in doubt, a provider behaves as it does.
    """

    #: The name the provider is registered under in ``pygrid.providers.PROVIDERS``.
    name: ClassVar[str]

    @abc.abstractmethod
    def check_credentials(self) -> None:
        """Check that credentials and required settings for this cloud can be found.

        Cheap and offline where the cloud allows it: it resolves the credentials the provider
        would use (it need not prove the cloud accepts them).

        Raises
        ------
        MissingCredentials
            Credentials, or a setting such as the region, project or subscription, are missing or
            invalid. The message MUST name exactly what is missing and how to provide it for this
            cloud: the environment variables, the credential files, and the CLI login command
            (``aws configure``, ``gcloud auth application-default login``, ``az login``).
        """

    @abc.abstractmethod
    def group_status(self, group: str) -> GroupStatus:
        """Read the group's desired size, bounds and members.

        Parameters
        ----------
        group : str
            The group id in the provider's format (the Terraform output ``worker_group``).

        Returns
        -------
        GroupStatus
            ``desired`` is the size last asked for; ``instances`` are the machines that are
            members of the group now (machines being removed may still be listed, as
            ``"stopping"``), sorted by id, each with a state normalised to one of `STATES`.

        Raises
        ------
        GroupNotFound
            There is no such group.
        """

    @abc.abstractmethod
    def resize(self, group: str, desired: int) -> None:
        """Ask the group to run ``desired`` instances.

        Returns once the cloud has accepted the new size: `group_status` then reports
        ``desired``. Instances start and stop asynchronously on clouds (the local provider
        starts and stops its processes before returning).

        MUST read the group's bounds and refuse a size outside ``[minimum, maximum]`` with
        `SizeOutOfBounds` (a `ValueError`) before changing anything. MUST be idempotent:
        resizing to the current size changes nothing and is not an error.

        Raises
        ------
        TypeError
            ``desired`` is not an int.
        SizeOutOfBounds
            ``desired`` is outside ``[minimum, maximum]``; nothing was changed.
        GroupNotFound
            There is no such group.
        """

    @abc.abstractmethod
    def instance_state(self, instance_id: str) -> str:
        """Return the state of one machine, normalised to one of `STATES`.

        Parameters
        ----------
        instance_id : str
            An `Instance.id` from `group_status` (other id formats the provider documents, such
            as the app VM's Terraform ``instance_id``, are accepted too).

        Returns
        -------
        str
            One of `STATES`. A machine the cloud no longer knows (deleted, or never created) is
            ``"terminated"``: clouds forget deleted machines, so this cannot be told apart.

        Raises
        ------
        ValueError
            ``instance_id`` is not in a format this provider understands.
        """

    def close(self) -> None:
        """Release the provider's network connections; it MUST NOT be used afterwards.

        Providers holding SDK clients MUST close them here. A provider is also a context manager
        that closes it on exit. The default has nothing to release.
        """
        return

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_secret_value(value: object) -> str:
    """Return ``value`` if a `SecretStore` may hold it, else raise `TypeError` / `ValueError`."""
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("a secret value must not be empty")
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise ValueError(f"a secret value must not exceed {MAX_SECRET_BYTES} bytes")
    return value


class SecretStore(abc.ABC):
    """A cloud's secret store (or a local folder), seen as named secrets with one current value.

    The deployment uses it for one thing: the Node writes the token its cloud Workers present
    (`pygrid.providers.worker_secret`), and each Worker reads it with its own instance identity.
    The Terraform modules create the secret (AWS Secrets Manager, GCP Secret Manager) or a
    Key Vault that holds only it (Azure), and grant the app VM read and write and the Workers
    read on it alone. Implementations are registered by name in
    ``pygrid.providers.SECRET_STORES`` and built by `pygrid.providers.get_secret_store`.

    A secret is named as the Terraform module outputs it (an ARN, ``projects/P/secrets/S``, a
    Key Vault secret URL; see each implementation). Every implementation MUST:

    - import its cloud SDK lazily and not touch the network in ``__init__`` (as `CloudProvider`);
    - raise `ValueError` for a secret name it cannot parse, before any request;
    - raise `MissingCredentials` when credentials are missing or refused, and `ProviderError`
      (chaining the SDK's error) for other failures of the cloud;
    - be usable from several threads.

    The local store (`pygrid.providers.local.LocalSecretStore`) is the reference implementation.
    """

    #: The name the store is registered under in ``pygrid.providers.SECRET_STORES``.
    name: ClassVar[str]

    @abc.abstractmethod
    def read(self, secret: str) -> str | None:
        """Return the secret's current value, or None if it has none yet.

        A secret that exists without a value (created empty by Terraform) and a secret that does
        not exist at all both give None: a Worker waiting for its Node cannot tell them apart,
        and need not.
        """

    @abc.abstractmethod
    def write(self, secret: str, value: str) -> None:
        """Make ``value`` the secret's current value (a new version where the cloud keeps them).

        ``value`` is checked by `check_secret_value` before any request. Once ``write`` returns,
        `read` (from any process with read access) returns ``value`` until the next write. MAY
        create the secret where the store's permissions allow it; MUST raise `ProviderError` if
        the secret does not exist and cannot be created.
        """

    def close(self) -> None:
        """Release network connections; the store MUST NOT be used afterwards."""
        return

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
