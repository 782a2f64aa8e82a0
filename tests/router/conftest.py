"""Router tests reuse the registry's fixture: a real registry on a fresh database."""

from __future__ import annotations

from tests.registry.conftest import registry

__all__ = ["registry"]
