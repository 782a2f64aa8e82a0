"""Client tests run against the same real registry as tests/registry."""

from tests.registry.conftest import registry

__all__ = ["registry"]
