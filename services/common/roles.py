"""Role decisions a data-plane service makes over the roles WhoAmI returns: pure, no I/O.

They mirror the registry's own (`services/registry/auth.py`, `Caller`); a test checks that
both agree on every kind of grant. Existence and workspace checks are not made here: ask the
registry for the object with the caller's token first (`RegistryGate`), so an object of
another workspace stays NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Iterable

from eventfn_api.registry.v1 import resources_pb2 as res


def _grants(member: res.Member, role: int) -> Iterable[res.RoleGrant]:
    return (g for g in member.roles if g.role == role)


def is_owner(member: res.Member) -> bool:
    """Tell whether the member is a Workspace Owner."""
    return any(True for _ in _grants(member, res.ROLE_WORKSPACE_OWNER))


def _ids(resource_names: Iterable[str]) -> set[str]:
    return {name.rsplit("/", 1)[-1] for name in resource_names}


def may_administer_source(member: res.Member, source_id: str | None) -> bool:
    """Tell whether the member is Owner or Source Admin covering the source (None: all)."""
    return is_owner(member) or any(
        not g.sources or (source_id is not None and source_id in _ids(g.sources))
        for g in _grants(member, res.ROLE_SOURCE_ADMIN)
    )


def may_write_function(member: res.Member, function_id: str | None) -> bool:
    """Tell whether the member is Owner or Functions Admin covering the function (None: all)."""
    return is_owner(member) or any(
        not g.functions or (function_id is not None and function_id in _ids(g.functions))
        for g in _grants(member, res.ROLE_FUNCTIONS_ADMIN)
    )
