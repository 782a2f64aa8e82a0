"""Who is calling and what their roles allow: pure decisions, no I/O."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.errors import PermissionDenied

TOKEN_PREFIX = "efn_"

OWNER = res.ROLE_WORKSPACE_OWNER
FUNCTIONS_ADMIN = res.ROLE_FUNCTIONS_ADMIN
FUNCTIONS_READ_ONLY = res.ROLE_FUNCTIONS_READ_ONLY
SOURCE_ADMIN = res.ROLE_SOURCE_ADMIN


def new_secret() -> str:
    """Make a new token secret."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Hash a token secret for storage and lookup (secrets are high-entropy: no salt needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """One role, limited to some functions or sources when the tuples are non-empty."""

    role: int
    function_ids: tuple[str, ...] = ()
    source_ids: tuple[str, ...] = ()

    def covers_function(self, function_id: str | None) -> bool:
        """Tell whether the grant reaches the function (None: "all functions" is needed)."""
        if not self.function_ids:
            return True
        return function_id is not None and function_id in self.function_ids

    def covers_source(self, source_id: str | None) -> bool:
        """Tell whether the grant reaches the source (None: "all sources" is needed)."""
        if not self.source_ids:
            return True
        return source_id is not None and source_id in self.source_ids


@dataclass(frozen=True)
class Caller:
    """An authenticated member and its roles in its one workspace."""

    member_id: str
    workspace_id: str
    email: str
    grants: tuple[Grant, ...] = field(default_factory=tuple)
    bootstrap: bool = False

    def _has(self, role: int) -> list[Grant]:
        return [g for g in self.grants if g.role == role]

    @property
    def is_owner(self) -> bool:
        """Tell whether the caller is a Workspace Owner."""
        return bool(self._has(OWNER))

    def can_read_function(self, function_id: str | None) -> bool:
        """Read a function, its versions and code (None: every function)."""
        if self.is_owner or self._has(SOURCE_ADMIN):
            return True
        return any(
            g.covers_function(function_id)
            for g in self._has(FUNCTIONS_ADMIN) + self._has(FUNCTIONS_READ_ONLY)
        )

    def can_write_function(self, function_id: str | None) -> bool:
        """Create (None), save or delete a function."""
        return self.is_owner or any(
            g.covers_function(function_id) for g in self._has(FUNCTIONS_ADMIN)
        )

    def can_admin_source(self, source_id: str | None) -> bool:
        """Create (None), rotate, delete a source; connect, change or deploy its instances."""
        return self.is_owner or any(g.covers_source(source_id) for g in self._has(SOURCE_ADMIN))

    def readable_function_ids(self) -> frozenset[str] | None:
        """The functions whose instances the caller may read; None for all of them."""
        if self.can_read_function(None):
            return None
        return frozenset(
            f
            for g in self._has(FUNCTIONS_ADMIN) + self._has(FUNCTIONS_READ_ONLY)
            for f in g.function_ids
        )

    def can_read_instance(self, function_id: str, source_id: str) -> bool:
        """Read an instance: through its function or its source."""
        return self.can_read_function(function_id) or self.can_admin_source(source_id)


def require(allowed: bool, what: str) -> None:
    """Raise PermissionDenied naming the missing permission unless `allowed`."""
    if not allowed:
        raise PermissionDenied(f"your roles do not allow you to {what}")


def grants_from_json(rows: list[dict]) -> tuple[Grant, ...]:
    """Decode role grants as stored in the member table."""
    return tuple(
        Grant(
            role=int(r["role"]),
            function_ids=tuple(r.get("function_ids", ())),
            source_ids=tuple(r.get("source_ids", ())),
        )
        for r in rows
    )


def grants_to_json(grants: tuple[Grant, ...]) -> list[dict]:
    """Encode role grants for the member table."""
    return [
        {"role": g.role, "function_ids": list(g.function_ids), "source_ids": list(g.source_ids)}
        for g in grants
    ]
