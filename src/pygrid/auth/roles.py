"""Roles and the named permissions each holds. Every mutating route declares one permission.

A role's rank decides what it may hand out: a user may give only roles ranked strictly below
their own, and nobody may change their own role, so nobody can raise themselves.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a person is on a Node or Network."""

    owner = "owner"
    admin = "admin"
    compliance_officer = "compliance_officer"
    data_scientist = "data_scientist"


class Permission(StrEnum):
    """A named right that routes require."""

    list_users = "list_users"
    manage_users = "manage_users"
    edit_own_profile = "edit_own_profile"
    host_processes = "host_processes"
    upload_datasets = "upload_datasets"
    submit_jobs = "submit_jobs"
    triage_requests = "triage_requests"
    manage_budgets = "manage_budgets"
    manage_workers = "manage_workers"
    manage_nodes = "manage_nodes"
    read_audit_log = "read_audit_log"


RANK: dict[Role, int] = {
    Role.owner: 100,
    Role.admin: 80,
    Role.compliance_officer: 50,
    Role.data_scientist: 10,
}

_ALL = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.owner: _ALL,
    Role.admin: _ALL,
    Role.compliance_officer: frozenset(
        {
            Permission.edit_own_profile,
            Permission.list_users,
            Permission.triage_requests,
            Permission.read_audit_log,
        }
    ),
    Role.data_scientist: frozenset(
        {Permission.edit_own_profile, Permission.host_processes, Permission.submit_jobs}
    ),
}


def has_permission(role: Role | str, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``."""
    return permission in ROLE_PERMISSIONS.get(Role(role), frozenset())


def can_grant(granter: Role | str, role: Role | str) -> bool:
    """Whether a user with role ``granter`` may give ``role`` to someone else."""
    return RANK[Role(granter)] > RANK[Role(role)]
