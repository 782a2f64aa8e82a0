"""Issue 10, item 4: Executor.Preview with code runs on the production worker pool, so it
needs Functions Admin of the function the code is a draft of (of all functions when the
request names none); Workspace Owners qualify. A saved version needs the same role over its
function.

Every role against every kind of Preview, like the registry's authorization matrix, plus the
bypasses an attacker tries: another workspace's function, the service token, no token, and a
member whose roles were emptied behind the API's back. (Code beside a saved version, a bypass
tried once, cannot be sent any more: `code` and `version` are one oneof, issue 13.)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings
from tests.registry.conftest import BOOTSTRAP, SERVICE, Registry, auth, running_registry

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED

OWNER = "owner"
FN_ADMIN = "functions_admin"
FN_ADMIN_A = "functions_admin_of_A"
FN_READ = "functions_read_only"
FN_READ_A = "functions_read_only_of_A"
SRC_ADMIN = "source_admin"
SRC_ADMIN_S = "source_admin_of_S"
ROLELESS = "member_without_roles"
OUTSIDER = "owner_of_another_workspace"
BOOTSTRAP_ADMIN = "bootstrap_admin"
SERVICE_TOKEN = "service_token"
ANONYMOUS = "no_token"
MEMBERS = (OWNER, FN_ADMIN, FN_ADMIN_A, FN_READ, FN_READ_A, SRC_ADMIN, SRC_ADMIN_S, ROLELESS)
ROLES = (*MEMBERS, OUTSIDER, BOOTSTRAP_ADMIN, SERVICE_TOKEN, ANONYMOUS)

CODE = "async function onTrack(event, settings) { console.log('ran'); return {ran: true} }"
EVENT = '{"type": "track", "event": "Clicked", "userId": "u1"}'


@dataclass
class World:
    """A workspace with functions A and B, a member per role, and the executor's stub."""

    executor: executor_pb2_grpc.ExecutorStub
    tokens: dict[str, str | None]
    fn_a: str = ""
    fn_b: str = ""
    ver_a: str = ""
    ver_b: str = ""
    foreign_fn: str = ""
    member_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One kind of Preview: what it names, and which members of the workspace may make it.

    `outsiders` is what owners of other workspaces get: NOT_FOUND (word for word as for a
    made-up id) when the call names an object of this workspace, OK when it names none and
    so runs in their own workspace, which they own.
    """

    name: str
    code: bool
    allowed: frozenset[str]
    names: dict[str, str]  # request field -> World attribute holding its value
    outsiders: grpc.StatusCode = NOT_FOUND


CASES = [
    Case("code", True, frozenset({OWNER, FN_ADMIN}), {}, outsiders=OK),
    Case("code[A]", True, frozenset({OWNER, FN_ADMIN, FN_ADMIN_A}), {"function": "fn_a"}),
    Case("code[B]", True, frozenset({OWNER, FN_ADMIN}), {"function": "fn_b"}),
    Case("version[A]", False, frozenset({OWNER, FN_ADMIN, FN_ADMIN_A}), {"version": "ver_a"}),
    Case("version[B]", False, frozenset({OWNER, FN_ADMIN}), {"version": "ver_b"}),
]


def expected(case: Case, role: str) -> grpc.StatusCode:
    """The status executor.proto documents for this role."""
    if role == ANONYMOUS:
        return UNAUTHENTICATED
    if role == SERVICE_TOKEN:
        return DENIED
    if role in (OUTSIDER, BOOTSTRAP_ADMIN):
        return case.outsiders
    return OK if role in case.allowed else DENIED


def request_of(case: Case, ids: dict[str, str]) -> executor_pb2.PreviewRequest:
    if case.code:
        return executor_pb2.PreviewRequest(code=CODE, event_json=EVENT, **ids)
    return executor_pb2.PreviewRequest(event_json=EVENT, **ids)


@pytest.fixture(scope="module")
async def world(
    module_database: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """Start a registry and an executor (reading no events) and build the workspace."""
    async with AsyncExitStack() as stack:
        registry = await stack.enter_async_context(
            running_registry(module_database, Path(tmp_path_factory.mktemp("registry")))
        )
        unique = uuid.uuid4().hex[:8]
        executor = await start_executor(
            ExecutorSettings(
                executor_listen="127.0.0.1:0",
                nats_url=nats_url,
                registry_addr=f"127.0.0.1:{registry.port}",
                database_url=module_database,
                service_token=SERVICE,
                executor_workers=1,
                executor_name=f"preview-authz-{unique}",
                executor_consumer=f"preview-authz-{unique}",
                executor_subjects=f"events.preview-authz-{unique}.>",
                executor_shutdown_grace_seconds=1,
            ),
            stack,
        )
        ex_channel = grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}")
        stack.push_async_callback(ex_channel.close)
        yield await build_world(registry, executor_pb2_grpc.ExecutorStub(ex_channel))


async def build_world(r: Registry, executor: executor_pb2_grpc.ExecutorStub) -> World:
    """Create the workspace, its functions, a member per role and another workspace."""
    ws_id, owner = await r.workspace("Preview matrix")
    other_id, outsider = await r.workspace("Preview elsewhere")
    parents = {owner: f"workspaces/{ws_id}", outsider: f"workspaces/{other_id}"}
    w = World(executor, {OWNER: owner, OUTSIDER: outsider, BOOTSTRAP_ADMIN: BOOTSTRAP})
    w.tokens |= {SERVICE_TOKEN: SERVICE, ANONYMOUS: None}

    async def function(token: str, name: str) -> tuple[str, str]:
        made = await r.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=parents[token],
                function=res.DestinationFunction(display_name=name),
                code=CODE,
            ),
            metadata=auth(token),
        )
        return made.function.name, made.version.name

    w.fn_a, w.ver_a = await function(owner, "A")
    w.fn_b, w.ver_b = await function(owner, "B")
    w.foreign_fn, _ = await function(outsider, "Theirs")
    source = await r.stub.CreateSource(
        pb.CreateSourceRequest(parent=parents[owner], source=res.Source(display_name="S")),
        metadata=auth(owner),
    )
    grants = {
        FN_ADMIN: res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN),
        FN_ADMIN_A: res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[w.fn_a]),
        FN_READ: res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY),
        FN_READ_A: res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[w.fn_a]),
        SRC_ADMIN: res.RoleGrant(role=res.ROLE_SOURCE_ADMIN),
        SRC_ADMIN_S: res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[source.source.name]),
        ROLELESS: res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY),
    }
    for role, grant in grants.items():
        w.tokens[role] = await r.member(owner, role, grant)
        who = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(w.tokens[role] or ""))
        w.member_ids[role] = who.member.name.rsplit("/", 1)[-1]
    # The API refuses a member without roles; rows can still end up so (old data, a bad
    # migration): such a member must be able to do nothing at all.
    conn = await asyncpg.connect(r.database_url)
    try:
        await conn.execute(
            "UPDATE member SET roles = '[]'::jsonb WHERE id = $1", w.member_ids[ROLELESS]
        )
    finally:
        await conn.close()
    return w


def _fake(real: str) -> str:
    """The same name with ids that never existed."""
    return "/".join(
        part.split("_")[0] + "_" + "0" * 20 if "_" in part else part for part in real.split("/")
    )


def _normalized(details: str | None, values: list[str]) -> str:
    out = details or ""
    for value in sorted(values, key=len, reverse=True):
        out = out.replace(value, "<id>")
    return re.sub(r"\s+", " ", out)


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_preview_authz(case: Case, role: str, world: World) -> None:
    ids = {k: getattr(world, v) for k, v in case.names.items()}
    token = world.tokens[role]
    md = auth(token) if token is not None else ()
    want = expected(case, role)
    got, result = await _outcome(world.executor.Preview(request_of(case, ids), metadata=md))
    detail = "" if got == OK else f": {result.details()}"
    assert got == want, f"{case.name} as {role}: expected {want.name}, got {got.name}{detail}"
    if got == OK:
        assert result.outcome == types_pb2.OUTCOME_DELIVERED, result
        assert "ran" in result.logs
    if got == NOT_FOUND:
        fakes = {k: _fake(v) for k, v in ids.items()}
        code, error = await _outcome(world.executor.Preview(request_of(case, fakes), metadata=md))
        assert code == NOT_FOUND
        values = [*ids.values(), *fakes.values()]
        assert _normalized(error.details(), values) == _normalized(result.details(), values)


async def test_another_workspaces_function_is_not_found_like_a_missing_one(world: World) -> None:
    for role in (OWNER, FN_ADMIN):
        md = auth(world.tokens[role] or "")
        theirs = await _outcome(
            world.executor.Preview(
                executor_pb2.PreviewRequest(code=CODE, event_json=EVENT, function=world.foreign_fn),
                metadata=md,
            )
        )
        missing = await _outcome(
            world.executor.Preview(
                executor_pb2.PreviewRequest(
                    code=CODE, event_json=EVENT, function=_fake(world.foreign_fn)
                ),
                metadata=md,
            )
        )
        assert theirs[0] == missing[0] == NOT_FOUND
        values = [world.foreign_fn, _fake(world.foreign_fn)]
        assert _normalized(theirs[1].details(), values) == _normalized(missing[1].details(), values)


async def test_a_denied_preview_says_which_role_it_needs(world: World) -> None:
    for role, function in ((FN_READ, ""), (FN_READ_A, world.fn_a), (FN_ADMIN_A, "")):
        code, error = await _outcome(
            world.executor.Preview(
                executor_pb2.PreviewRequest(code=CODE, event_json=EVENT, function=function),
                metadata=auth(world.tokens[role] or ""),
            )
        )
        assert code == DENIED, role
        assert "Functions Admin" in (error.details() or ""), error.details()


async def test_a_preview_names_exactly_one_program(world: World) -> None:
    md = auth(world.tokens[OWNER] or "")
    for request, named in (
        (executor_pb2.PreviewRequest(event_json=EVENT), "program"),
        (executor_pb2.PreviewRequest(code="", event_json=EVENT), "code"),
        (executor_pb2.PreviewRequest(code=CODE), "event_json"),
    ):
        code, error = await _outcome(world.executor.Preview(request, metadata=md))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, named
        assert named in (error.details() or "")
    # Setting one member of the oneof clears the other: code beside a version cannot be sent.
    both = executor_pb2.PreviewRequest(code=CODE, event_json=EVENT)
    both.version = world.ver_a
    assert both.WhichOneof("program") == "version" and both.code == ""
