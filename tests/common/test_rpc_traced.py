"""Which gRPC calls get a server span: the platform's own predicate decides as the
instrumentation's filters `negate(any_of(health_check(), method_name("WatchConfig")))`."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.instrumentation.grpc import filters

from services.common.rpc_observe import traced

REFERENCE = filters.negate(
    filters.any_of(filters.health_check(), filters.method_name("WatchConfig"))
)


@dataclass(frozen=True)
class Details:
    """What grpc.aio hands an interceptor: an object with the full method name."""

    method: str


# gRPC hands a server the method as `/<package.Service>/<Method>`.
KNOWN = ("grpc.health.v1.Health", "eventfn.registry.v1.RegistryService", "Check", "Watch")
NAME = st.sampled_from([*KNOWN, "WatchConfig", "Ingest", "x"]) | st.text(
    st.characters(blacklist_characters="/"), min_size=1, max_size=12
)
METHODS = st.builds(lambda service, method: f"/{service}/{method}", NAME, NAME)


@given(METHODS)
def test_traced_decides_as_the_instrumentations_filters(method: str) -> None:
    assert traced(Details(method)) == REFERENCE(Details(method))


def test_the_calls_left_untraced() -> None:
    assert not traced(Details("/grpc.health.v1.Health/Check"))
    assert not traced(Details("/eventfn.registry.v1.RegistryService/WatchConfig"))
    assert traced(Details("/eventfn.router.v1.RouterService/Ingest"))
