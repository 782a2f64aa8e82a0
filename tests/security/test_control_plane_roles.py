"""The data plane's role decisions (services/common/roles.py, over WhoAmI's roles) agree with
the registry's own (services/registry/auth.py) for every combination of grants: a drift
would let Preview run code, or the retrier replay, for someone the registry would refuse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import roles
from services.registry import auth

ROLE_VALUES = [
    res.ROLE_WORKSPACE_OWNER,
    res.ROLE_FUNCTIONS_ADMIN,
    res.ROLE_FUNCTIONS_READ_ONLY,
    res.ROLE_SOURCE_ADMIN,
]
IDS = st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True)
GRANT = st.builds(
    lambda role, functions, sources: auth.Grant(role, tuple(functions), tuple(sources)),
    st.sampled_from(ROLE_VALUES),
    IDS,
    IDS,
)
TARGET = st.sampled_from([None, "a", "b", "c"])


def both(grants: list[auth.Grant]) -> tuple[auth.Caller, res.Member]:
    caller = auth.Caller("mem_1", "ws_1", "x@example.com", tuple(grants))
    member = res.Member(
        name="workspaces/ws_1/members/mem_1",
        roles=[
            res.RoleGrant(  # the API names them: the data plane compares the ids they end with
                role=g.role,  # type: ignore[arg-type]
                functions=[f"workspaces/ws_1/functions/{f}" for f in g.function_ids],
                sources=[f"workspaces/ws_1/sources/{s}" for s in g.source_ids],
            )
            for g in grants
        ],
    )
    return caller, member


@given(st.lists(GRANT, max_size=3), TARGET)
def test_function_admin_decision_matches_the_registry(
    grants: list[auth.Grant], function_id: str | None
) -> None:
    caller, member = both(grants)
    assert roles.may_write_function(member, function_id) == caller.can_write_function(function_id)


@given(st.lists(GRANT, max_size=3), TARGET)
def test_source_admin_decision_matches_the_registry(
    grants: list[auth.Grant], source_id: str | None
) -> None:
    caller, member = both(grants)
    assert roles.may_administer_source(member, source_id) == caller.can_admin_source(source_id)


def test_no_roles_allow_nothing() -> None:
    member = res.Member(name="workspaces/ws_1/members/mem_1")
    assert not roles.may_write_function(member, None)
    assert not roles.may_write_function(member, "a")
    assert not roles.may_administer_source(member, "a")
