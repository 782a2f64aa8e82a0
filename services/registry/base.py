"""What every part of the registry servicer shares: storage, authentication, validators."""

from __future__ import annotations

from dataclasses import dataclass

from services.registry.access import Authenticator
from services.registry.secrets import SecretBox
from services.registry.store import RegistryStore
from services.registry.validation import FilterChecker, SyntaxChecker


@dataclass
class RegistryDeps:
    """The dependencies of the registry servicer, passed in by `main`."""

    store: RegistryStore
    authn: Authenticator
    secrets: SecretBox
    check_syntax: SyntaxChecker
    check_filter: FilterChecker


class RegistryBase:
    """Holds the dependencies; the RPC mixins build on it."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn
