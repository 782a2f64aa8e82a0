"""Every Registry RPC called by every role: allowed, PERMISSION_DENIED, NOT_FOUND or
UNAUTHENTICATED as registry.proto documents it. One test per (call, role) cell.

Roles: Workspace Owner; Functions Admin and Functions Read-only, of all functions or of A;
Source Admin, of all sources or of S; Functions Admin plus Source Admin of S (Save & Deploy);
the owner of another workspace and the bootstrap admin (NOT_FOUND for this workspace's
objects, word for word as for names that never existed); the service token; no token.

One registry and one world (workspace, functions A and B, sources S and T, instances A@S and
B@T, a member per role) serve the whole module; a call that deletes something gets a fresh
object, and a role limited to A or S gets a fresh member limited to that fresh object when
the cell is about a covered object. Calls that change shared objects leave them usable.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import (
    BOOTSTRAP,
    HANDLER,
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    running_registry,
)

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
# Two grants at once: what Save & Deploy needs short of owning the workspace.
FN_ADMIN_SRC_ADMIN_S = "functions_admin_and_source_admin_of_S"
OUTSIDER = "owner_of_another_workspace"
BOOTSTRAP_ADMIN = "bootstrap_admin"
SERVICE_TOKEN = "service_token"
ANONYMOUS = "no_token"

MEMBERS = (
    OWNER,
    FN_ADMIN,
    FN_ADMIN_A,
    FN_READ,
    FN_READ_A,
    SRC_ADMIN,
    SRC_ADMIN_S,
    FN_ADMIN_SRC_ADMIN_S,
)
ROLES = (*MEMBERS, OUTSIDER, BOOTSTRAP_ADMIN, SERVICE_TOKEN, ANONYMOUS)
LIMITED = {FN_ADMIN_A: res.ROLE_FUNCTIONS_ADMIN, FN_READ_A: res.ROLE_FUNCTIONS_READ_ONLY}
ALL = frozenset(MEMBERS)
NOT_LIMITED_TO_A = ALL - {FN_ADMIN_A, FN_READ_A}

_seq = itertools.count()


def unique(prefix: str) -> str:
    """Make a name no other cell uses."""
    return f"{prefix} {next(_seq)}"


def struct(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


@dataclass
class World:
    """The shared objects (by resource name) and a token per role."""

    r: Registry
    workspace: str
    tokens: dict[str, str | None]
    fn_a: str
    fn_b: str
    ver_a: str
    ver_b: str
    src_s: str
    src_t: str
    ins_as: str
    ins_bt: str
    target_member: str
    member_names: dict[str, str] = field(default_factory=dict)
    self_names: dict[str, str] = field(default_factory=dict)  # every role's own member
    workspaces: dict[str, str] = field(default_factory=dict)  # the workspace of each role

    @property
    def owner(self) -> str:
        token = self.tokens[OWNER]
        assert token is not None
        return token

    async def function(self, name: str) -> tuple[str, str]:
        made = await self.r.stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=self.workspace,
                function=res.DestinationFunction(display_name=unique(name)),
                code=HANDLER,
                settings=SETTINGS,
            ),
            metadata=auth(self.owner),
        )
        return made.function.name, made.version.name

    async def source(self, name: str) -> str:
        made = await self.r.stub.CreateSource(
            pb.CreateSourceRequest(
                parent=self.workspace, source=res.Source(display_name=unique(name))
            ),
            metadata=auth(self.owner),
        )
        return made.source.name

    async def instance(self, function: str, source: str) -> str:
        made = await self.r.stub.CreateInstance(
            pb.CreateInstanceRequest(
                parent=self.workspace,
                instance=res.Instance(
                    function=function,
                    source=source,
                    display_name=unique("instance"),
                    settings=struct(endpoint="http://127.0.0.1:9/hook", apiKey="k"),
                ),
            ),
            metadata=auth(self.owner),
        )
        return made.instance.name

    async def token_of(self, member: str) -> tuple[str, str]:
        made = await self.r.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=self.workspace,
                token=res.Token(member=member, display_name=unique("tok")),
            ),
            metadata=auth(self.owner),
        )
        return made.token.name, made.secret

    async def limited_to(self, role: str, *, function: str = "", source: str = "") -> str:
        """Return a token of a new member with `role` limited to the given fresh object."""
        if role == FN_ADMIN_SRC_ADMIN_S:
            grants = [
                res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN),
                res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[source]),
            ]
        elif role == SRC_ADMIN_S:
            grants = [res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[source])]
        else:
            grants = [res.RoleGrant(role=LIMITED[role], functions=[function])]
        return await self.r.member(self.owner, unique(role), *grants)


@dataclass
class Target:
    """What one cell's call addresses, and the token to call with when not the role's own."""

    ids: dict[str, str]
    token: str | None = None


Setup = Callable[[World, str], Awaitable[Target]]
Call = Callable[[registry_pb2_grpc.RegistryStub, dict[str, str], Any], Awaitable[Any]]
Check = Callable[[Any, World, str], None]


@dataclass(frozen=True)
class Case:
    """One call of the matrix: which workspace members may make it, and how it is scoped.

    scope "object": the call names an object of the world's workspace, so members of other
    workspaces get NOT_FOUND; "own": it acts on the caller's own workspace or self, so they
    are judged as the owner of their workspace; "bootstrap": only the bootstrap admin;
    "service": only the service token (every member, owners included, is denied).
    """

    name: str
    allowed: frozenset[str]
    scope: str
    call: Call
    setup: Setup | None = None
    check: Check | None = None
    service: bool = False  # the deployment's service token may make this call too
    bootstrap: bool = False  # the bootstrap admin may make it on any workspace


def expected(case: Case, role: str) -> grpc.StatusCode:
    """The status the proto's documentation gives for this role."""
    if role == ANONYMOUS:
        return UNAUTHENTICATED
    if case.scope == "service":
        return OK if role == SERVICE_TOKEN else DENIED
    if role == SERVICE_TOKEN:
        return OK if case.service else DENIED
    if case.scope == "bootstrap":
        return OK if role == BOOTSTRAP_ADMIN else DENIED
    if role == BOOTSTRAP_ADMIN and case.bootstrap:
        return OK
    if role == FN_ADMIN_SRC_ADMIN_S:  # the union of both roles, and what needs both
        return OK if case.allowed & {FN_ADMIN, SRC_ADMIN_S, role} else DENIED
    if role in (OUTSIDER, BOOTSTRAP_ADMIN):
        if case.scope == "object":
            return NOT_FOUND
        return OK if OWNER in case.allowed else DENIED
    return OK if role in case.allowed else DENIED


# -- setups ----------------------------------------------------------------------------------


def ids(**kw: str) -> Setup:
    """A setup naming shared objects by attribute of the world."""

    async def setup(w: World, role: str) -> Target:
        return Target({k: getattr(w, v) for k, v in kw.items()})

    return setup


async def fresh_member(w: World, role: str) -> Target:
    member = await w.r.stub.CreateMember(
        pb.CreateMemberRequest(
            parent=w.workspace,
            member=res.Member(
                email=unique("gone"), roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
            ),
        ),
        metadata=auth(w.owner),
    )
    return Target({"member": member.member.name})


async def own_token(w: World, role: str) -> Target:
    token = w.tokens[role]
    if token is None or role == SERVICE_TOKEN:  # no own token: any token of the workspace
        return Target({"token": (await w.token_of(w.target_member))[0]})
    made = await w.r.stub.CreateToken(
        pb.CreateTokenRequest(
            parent=w.workspaces[role], token=res.Token(display_name=unique("mine"))
        ),
        metadata=auth(token),
    )
    return Target({"token": made.token.name})


async def other_token(w: World, role: str) -> Target:
    return Target({"token": (await w.token_of(w.target_member))[0]})


async def self_member(w: World, role: str) -> Target:
    return Target({"member": w.self_names.get(role, w.target_member)})


def fresh_source(covered: bool) -> Setup:
    async def setup(w: World, role: str) -> Target:
        src = await w.source("doomed source")
        token = None
        if covered and role in (SRC_ADMIN_S, FN_ADMIN_SRC_ADMIN_S):
            token = await w.limited_to(role, source=src)
        return Target({"source": src}, token)

    return setup


def fresh_function(covered: bool) -> Setup:
    async def setup(w: World, role: str) -> Target:
        fn, _ = await w.function("doomed fn")
        token = None
        if covered and role in LIMITED:
            token = await w.limited_to(role, function=fn)
        return Target({"function": fn}, token)

    return setup


def fresh_old_version(covered: bool) -> Setup:
    """A new function saved once more: its first version is no longer the latest."""

    async def setup(w: World, role: str) -> Target:
        fn, first = await w.function("pruned fn")
        await w.r.stub.SaveFunction(
            pb.SaveFunctionRequest(name=fn, code=HANDLER, settings=SETTINGS),
            metadata=auth(w.owner),
        )
        token = None
        if covered and role in LIMITED:
            token = await w.limited_to(role, function=fn)
        return Target({"version": first}, token)

    return setup


def fresh_instance(fn_attr: str, src_attr: str) -> Setup:
    async def setup(w: World, role: str) -> Target:
        return Target({"instance": await w.instance(getattr(w, fn_attr), getattr(w, src_attr))})

    return setup


# -- checks of what a list shows ---------------------------------------------------------------


def sees(get: Callable[[Any], list[str]], visible: Callable[[World, str], set[str]]) -> Check:
    """Check that a list response shows exactly the expected shared objects of the world."""

    def check(resp: Any, w: World, role: str) -> None:
        shared = {w.fn_a, w.fn_b, w.src_s, w.src_t, w.ins_as, w.ins_bt}
        shown = set(get(resp)) & shared
        assert shown == visible(w, role), f"{role} sees {shown}"

    return check


def members_only(resp: Any, w: World, role: str) -> None:
    shown = {m.name for m in resp.members}
    if role in MEMBERS:
        assert w.target_member in shown
    else:
        assert not shown & set(w.member_names.values()), "another workspace's members leaked"


def tokens_of_caller(resp: Any, w: World, role: str) -> None:
    owners = {t.member for t in resp.tokens}
    if role == OWNER:
        assert w.target_member in owners, "an owner lists every token of the workspace"
    elif role in MEMBERS:
        assert owners == {w.member_names[role]}, "a member lists its own tokens only"
    else:
        assert not owners & set(w.member_names.values()), "another workspace's tokens leaked"


def audit_of_own_workspace(resp: Any, w: World, role: str) -> None:
    workspaces = {e.name.split("/auditEvents/")[0] for e in resp.events}
    assert workspaces, "a workspace's creation is audited"
    assert (workspaces == {w.workspace}) == (role == OWNER), f"{role} read {workspaces}"


def workspaces_seen(resp: Any, w: World, role: str) -> None:
    shown = {ws.name for ws in resp.workspaces}
    if role == BOOTSTRAP_ADMIN:
        assert w.workspace in shown and len(shown) >= 2, "the bootstrap admin sees all"
    else:
        assert shown == {w.workspaces[role]}, f"{role} sees {shown}"


def listed_ids(attr: str) -> Callable[[Any], list[str]]:
    return lambda resp: [x.name for x in getattr(resp, attr)]


def readable(w: World, role: str) -> set[str]:
    if role not in MEMBERS:
        return set()
    return {w.fn_a, w.fn_b} if role in NOT_LIMITED_TO_A else {w.fn_a}


def readable_instances(w: World, role: str) -> set[str]:
    if role not in MEMBERS:
        return set()
    return {w.ins_as, w.ins_bt} if role in NOT_LIMITED_TO_A else {w.ins_as}


def all_sources(w: World, role: str) -> set[str]:
    return {w.src_s, w.src_t} if role in MEMBERS else set()


# -- calls -----------------------------------------------------------------------------------


async def watch_first(stub: registry_pb2_grpc.RegistryStub, _: dict[str, str], md: Any) -> Any:
    stream = stub.WatchConfig(pb.WatchConfigRequest(watcher="authz-matrix"), metadata=md)
    try:
        return await asyncio.wait_for(stream.read(), timeout=10)
    finally:
        stream.cancel()


def deploy_request(i: dict[str, str], with_settings: bool = False) -> pb.DeployInstanceRequest:
    return pb.DeployInstanceRequest(
        name=i["instance"],
        version=i["version"],
        settings=struct(endpoint="http://127.0.0.1:9/other") if with_settings else None,
    )


def update_request(i: dict[str, str]) -> pb.UpdateInstanceRequest:
    return pb.UpdateInstanceRequest(
        instance=res.Instance(name=i["instance"], batch_size=25),
        update_mask=field_mask_pb2.FieldMask(paths=["batch_size"]),
    )


def save_request(
    i: dict[str, str], deploy: bool = False, with_settings: bool = False
) -> pb.SaveFunctionRequest:
    return pb.SaveFunctionRequest(
        name=i["function"],
        code=HANDLER,
        settings=SETTINGS,
        deploy_instances=[i["instance"]] if deploy else [],
        deploy_settings=(
            {i["instance"]: struct(endpoint="http://127.0.0.1:9/other")} if with_settings else {}
        ),
    )


def create_instance(i: dict[str, str]) -> pb.CreateInstanceRequest:
    return pb.CreateInstanceRequest(
        parent=i["function"].split("/functions/")[0],
        instance=res.Instance(
            function=i["function"],
            source=i["source"],
            display_name=unique("new instance"),
            settings=struct(endpoint="http://127.0.0.1:9/hook", apiKey="k"),
        ),
    )


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def all_tokens(
    stub: registry_pb2_grpc.RegistryStub, parent: str, md: Any
) -> pb.ListTokensResponse:
    """List every page of tokens (the matrix makes hundreds) into one response."""
    out = pb.ListTokensResponse()
    request = pb.ListTokensRequest(parent=parent, page_size=500)
    while True:
        page = await stub.ListTokens(request, metadata=md)
        out.tokens.extend(page.tokens)
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


FN_ADMINS_OF_A = frozenset({OWNER, FN_ADMIN, FN_ADMIN_A})
SRC_ADMINS_OF_S = frozenset({OWNER, SRC_ADMIN, SRC_ADMIN_S})
ALL_SRC_ADMINS = frozenset({OWNER, SRC_ADMIN})

CASES = [
    Case(
        "CreateWorkspace",
        frozenset(),
        "bootstrap",
        lambda s, i, md: s.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name=unique("ws"))),
            metadata=md,
        ),
    ),
    Case(
        "GetWorkspace",
        ALL,
        "object",
        lambda s, i, md: s.GetWorkspace(pb.GetWorkspaceRequest(name=i["workspace"]), metadata=md),
        ids(workspace="workspace"),
        bootstrap=True,
    ),
    Case(
        "ListWorkspaces",
        ALL,
        "own",
        lambda s, i, md: s.ListWorkspaces(pb.ListWorkspacesRequest(page_size=500), metadata=md),
        check=workspaces_seen,
    ),
    Case("WhoAmI", ALL, "own", lambda s, i, md: s.WhoAmI(pb.WhoAmIRequest(), metadata=md)),
    Case(
        "CreateMember",
        frozenset({OWNER}),
        "own",
        lambda s, i, md: s.CreateMember(
            pb.CreateMemberRequest(
                parent=i["parent"],
                member=res.Member(
                    email=unique("new"), roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
                ),
            ),
            metadata=md,
        ),
    ),
    Case(
        "GetMember[self]",
        ALL,
        "own",
        lambda s, i, md: s.GetMember(pb.GetMemberRequest(name=i["member"]), metadata=md),
        self_member,
    ),
    Case(
        "GetMember[other]",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.GetMember(pb.GetMemberRequest(name=i["member"]), metadata=md),
        ids(member="target_member"),
    ),
    Case(
        "ListMembers",
        frozenset({OWNER}),
        "own",
        lambda s, i, md: s.ListMembers(
            pb.ListMembersRequest(parent=i["parent"], page_size=500), metadata=md
        ),
        check=members_only,
    ),
    Case(
        "UpdateMember",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.UpdateMember(
            pb.UpdateMemberRequest(
                member=res.Member(
                    name=i["member"], roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
                ),
                update_mask=mask("roles"),
            ),
            metadata=md,
        ),
        ids(member="target_member"),
    ),
    Case(
        "DeleteMember",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.DeleteMember(pb.DeleteMemberRequest(name=i["member"]), metadata=md),
        fresh_member,
    ),
    Case(
        "CreateToken[self]",
        ALL,
        "own",
        lambda s, i, md: s.CreateToken(
            pb.CreateTokenRequest(parent=i["parent"], token=res.Token(display_name=unique("t"))),
            metadata=md,
        ),
    ),
    Case(
        "CreateToken[other member]",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.CreateToken(
            pb.CreateTokenRequest(
                parent=i["member"].split("/members/")[0],
                token=res.Token(member=i["member"], display_name=unique("t")),
            ),
            metadata=md,
        ),
        ids(member="target_member"),
    ),
    Case(
        "GetToken[own]",
        ALL,
        "own",
        lambda s, i, md: s.GetToken(pb.GetTokenRequest(name=i["token"]), metadata=md),
        own_token,
    ),
    Case(
        "GetToken[other member's]",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.GetToken(pb.GetTokenRequest(name=i["token"]), metadata=md),
        other_token,
    ),
    Case(
        "ListTokens",
        ALL,
        "own",
        lambda s, i, md: all_tokens(s, i["parent"], md),
        check=tokens_of_caller,
    ),
    Case(
        "RevokeToken[own]",
        ALL,
        "own",
        lambda s, i, md: s.RevokeToken(pb.RevokeTokenRequest(name=i["token"]), metadata=md),
        own_token,
    ),
    Case(
        "RevokeToken[other member's]",
        frozenset({OWNER}),
        "object",
        lambda s, i, md: s.RevokeToken(pb.RevokeTokenRequest(name=i["token"]), metadata=md),
        other_token,
    ),
    Case(
        "CreateSource",
        ALL_SRC_ADMINS,
        "own",
        lambda s, i, md: s.CreateSource(
            pb.CreateSourceRequest(
                parent=i["parent"], source=res.Source(display_name=unique("src"))
            ),
            metadata=md,
        ),
    ),
    Case(
        "GetSource[S]",
        ALL,
        "object",
        lambda s, i, md: s.GetSource(pb.GetSourceRequest(name=i["source"]), metadata=md),
        ids(source="src_s"),
    ),
    Case(
        "ListSources",
        ALL,
        "own",
        lambda s, i, md: s.ListSources(
            pb.ListSourcesRequest(parent=i["parent"], page_size=500), metadata=md
        ),
        check=sees(listed_ids("sources"), all_sources),
    ),
    Case(
        "UpdateSource[S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.UpdateSource(
            pb.UpdateSourceRequest(
                source=res.Source(name=i["source"], display_name=unique("S")),
                update_mask=mask("display_name"),
            ),
            metadata=md,
        ),
        ids(source="src_s"),
    ),
    Case(
        "UpdateSource[T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.UpdateSource(
            pb.UpdateSourceRequest(
                source=res.Source(name=i["source"], display_name=unique("T")),
                update_mask=mask("display_name"),
            ),
            metadata=md,
        ),
        ids(source="src_t"),
    ),
    Case(
        "RotateWriteKey[S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.RotateWriteKey(pb.RotateWriteKeyRequest(name=i["source"]), metadata=md),
        ids(source="src_s"),
    ),
    Case(
        "RotateWriteKey[T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.RotateWriteKey(pb.RotateWriteKeyRequest(name=i["source"]), metadata=md),
        ids(source="src_t"),
    ),
    Case(
        "DeleteSource[covered]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.DeleteSource(pb.DeleteSourceRequest(name=i["source"]), metadata=md),
        fresh_source(covered=True),
    ),
    Case(
        "DeleteSource[not covered]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.DeleteSource(pb.DeleteSourceRequest(name=i["source"]), metadata=md),
        fresh_source(covered=False),
    ),
    Case(
        "CreateFunction",
        frozenset({OWNER, FN_ADMIN}),
        "own",
        lambda s, i, md: s.CreateFunction(
            pb.CreateFunctionRequest(
                parent=i["parent"],
                function=res.DestinationFunction(display_name=unique("fn")),
                code=HANDLER,
                settings=SETTINGS,
            ),
            metadata=md,
        ),
    ),
    Case(
        "GetFunction[A]",
        ALL,
        "object",
        lambda s, i, md: s.GetFunction(pb.GetFunctionRequest(name=i["function"]), metadata=md),
        ids(function="fn_a"),
    ),
    Case(
        "GetFunction[B]",
        NOT_LIMITED_TO_A,
        "object",
        lambda s, i, md: s.GetFunction(pb.GetFunctionRequest(name=i["function"]), metadata=md),
        ids(function="fn_b"),
    ),
    Case(
        "ListFunctions",
        ALL,
        "own",
        lambda s, i, md: s.ListFunctions(
            pb.ListFunctionsRequest(parent=i["parent"], page_size=500), metadata=md
        ),
        check=sees(listed_ids("functions"), readable),
    ),
    Case(
        "UpdateFunction[A]",
        FN_ADMINS_OF_A,
        "object",
        lambda s, i, md: s.UpdateFunction(
            pb.UpdateFunctionRequest(
                function=res.DestinationFunction(name=i["function"], description=unique("d")),
                update_mask=mask("description"),
            ),
            metadata=md,
        ),
        ids(function="fn_a"),
    ),
    Case(
        "UpdateFunction[B]",
        frozenset({OWNER, FN_ADMIN}),
        "object",
        lambda s, i, md: s.UpdateFunction(
            pb.UpdateFunctionRequest(
                function=res.DestinationFunction(name=i["function"], description=unique("d")),
                update_mask=mask("description"),
            ),
            metadata=md,
        ),
        ids(function="fn_b"),
    ),
    Case(
        "SaveFunction[A]",
        FN_ADMINS_OF_A,
        "object",
        lambda s, i, md: s.SaveFunction(save_request(i), metadata=md),
        ids(function="fn_a"),
    ),
    Case(
        "SaveFunction[B]",
        frozenset({OWNER, FN_ADMIN}),
        "object",
        lambda s, i, md: s.SaveFunction(save_request(i), metadata=md),
        ids(function="fn_b"),
    ),
    # Save & Deploy needs Functions Admin of A *and* Source Admin of S.
    Case(
        "SaveFunction+deploy[A@S]",
        frozenset({OWNER, FN_ADMIN_SRC_ADMIN_S}),
        "object",
        lambda s, i, md: s.SaveFunction(save_request(i, deploy=True), metadata=md),
        ids(function="fn_a", instance="ins_as"),
    ),
    Case(
        "SaveFunction+deploy+settings[A@S]",
        frozenset({OWNER, FN_ADMIN_SRC_ADMIN_S}),
        "object",
        lambda s, i, md: s.SaveFunction(
            save_request(i, deploy=True, with_settings=True), metadata=md
        ),
        ids(function="fn_a", instance="ins_as"),
    ),
    Case(
        "DeleteFunction[covered]",
        FN_ADMINS_OF_A,
        "object",
        lambda s, i, md: s.DeleteFunction(
            pb.DeleteFunctionRequest(name=i["function"]), metadata=md
        ),
        fresh_function(covered=True),
    ),
    Case(
        "DeleteFunction[not covered]",
        frozenset({OWNER, FN_ADMIN}),
        "object",
        lambda s, i, md: s.DeleteFunction(
            pb.DeleteFunctionRequest(name=i["function"]), metadata=md
        ),
        fresh_function(covered=False),
    ),
    Case(
        "DeleteFunctionVersion[covered]",
        FN_ADMINS_OF_A,
        "object",
        lambda s, i, md: s.DeleteFunctionVersion(
            pb.DeleteFunctionVersionRequest(name=i["version"]), metadata=md
        ),
        fresh_old_version(covered=True),
    ),
    Case(
        "DeleteFunctionVersion[not covered]",
        frozenset({OWNER, FN_ADMIN}),
        "object",
        lambda s, i, md: s.DeleteFunctionVersion(
            pb.DeleteFunctionVersionRequest(name=i["version"]), metadata=md
        ),
        fresh_old_version(covered=False),
    ),
    Case(
        "ListFunctionVersions[A]",
        ALL,
        "object",
        lambda s, i, md: s.ListFunctionVersions(
            pb.ListFunctionVersionsRequest(parent=i["function"]), metadata=md
        ),
        ids(function="fn_a"),
    ),
    Case(
        "ListFunctionVersions[B]",
        NOT_LIMITED_TO_A,
        "object",
        lambda s, i, md: s.ListFunctionVersions(
            pb.ListFunctionVersionsRequest(parent=i["function"]), metadata=md
        ),
        ids(function="fn_b"),
    ),
    Case(
        "GetFunctionVersion[A]",
        ALL,
        "object",
        lambda s, i, md: s.GetFunctionVersion(
            pb.GetFunctionVersionRequest(name=i["version"]), metadata=md
        ),
        ids(version="ver_a"),
        service=True,
    ),
    Case(
        "GetFunctionVersion[B]",
        NOT_LIMITED_TO_A,
        "object",
        lambda s, i, md: s.GetFunctionVersion(
            pb.GetFunctionVersionRequest(name=i["version"]), metadata=md
        ),
        ids(version="ver_b"),
        service=True,
    ),
    Case(
        "CreateInstance[A to S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.CreateInstance(create_instance(i), metadata=md),
        ids(function="fn_a", source="src_s"),
    ),
    Case(
        "CreateInstance[B to T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.CreateInstance(create_instance(i), metadata=md),
        ids(function="fn_b", source="src_t"),
    ),
    Case(
        "GetInstance[A@S]",
        ALL,
        "object",
        lambda s, i, md: s.GetInstance(pb.GetInstanceRequest(name=i["instance"]), metadata=md),
        ids(instance="ins_as"),
    ),
    # Readable through its function (B) or its source (T); a Source Admin of S reads every
    # function, so it reads B@T too.
    Case(
        "GetInstance[B@T]",
        NOT_LIMITED_TO_A,
        "object",
        lambda s, i, md: s.GetInstance(pb.GetInstanceRequest(name=i["instance"]), metadata=md),
        ids(instance="ins_bt"),
    ),
    Case(
        "ListInstances",
        ALL,
        "own",
        lambda s, i, md: s.ListInstances(
            pb.ListInstancesRequest(parent=i["parent"], page_size=500), metadata=md
        ),
        check=sees(listed_ids("instances"), readable_instances),
    ),
    Case(
        "UpdateInstance[A@S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.UpdateInstance(update_request(i), metadata=md),
        ids(instance="ins_as"),
    ),
    Case(
        "UpdateInstance[B@T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.UpdateInstance(update_request(i), metadata=md),
        ids(instance="ins_bt"),
    ),
    Case(
        "DeployInstance[A@S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.DeployInstance(deploy_request(i), metadata=md),
        ids(instance="ins_as", version="ver_a"),
    ),
    Case(
        "DeployInstance+settings[A@S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.DeployInstance(deploy_request(i, with_settings=True), metadata=md),
        ids(instance="ins_as", version="ver_a"),
    ),
    Case(
        "DeployInstance[B@T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.DeployInstance(deploy_request(i), metadata=md),
        ids(instance="ins_bt", version="ver_b"),
    ),
    Case(
        "DeleteInstance[A@S]",
        SRC_ADMINS_OF_S,
        "object",
        lambda s, i, md: s.DeleteInstance(
            pb.DeleteInstanceRequest(name=i["instance"]), metadata=md
        ),
        fresh_instance("fn_a", "src_s"),
    ),
    Case(
        "DeleteInstance[B@T]",
        ALL_SRC_ADMINS,
        "object",
        lambda s, i, md: s.DeleteInstance(
            pb.DeleteInstanceRequest(name=i["instance"]), metadata=md
        ),
        fresh_instance("fn_b", "src_t"),
    ),
    Case(
        "ListAuditEvents",
        frozenset({OWNER}),
        "own",
        lambda s, i, md: s.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=i["parent"], page_size=500), metadata=md
        ),
        check=audit_of_own_workspace,
    ),
    # Only the data plane writes what it did for a member: any member could forge entries.
    Case(
        "RecordInstanceAction[A@S]",
        frozenset(),
        "service",
        lambda s, i, md: s.RecordInstanceAction(
            pb.RecordInstanceActionRequest(
                instance=i["instance"],
                action=res.AUDIT_ACTION_DEAD_LETTERS_REPLAY,
                actor=i["actor"],
            ),
            metadata=md,
        ),
        ids(instance="ins_as", actor="target_member"),
    ),
    Case(
        "RecordInstanceAction[B@T]",
        frozenset(),
        "service",
        lambda s, i, md: s.RecordInstanceAction(
            pb.RecordInstanceActionRequest(
                instance=i["instance"],
                action=res.AUDIT_ACTION_DEAD_LETTERS_PURGE,
                actor=i["actor"],
            ),
            metadata=md,
        ),
        ids(instance="ins_bt", actor="target_member"),
    ),
    Case("WatchConfig", frozenset(), "service", watch_first),
    # Keys are the deployment's, not a workspace's: its bootstrap administrator alone.
    Case(
        "RotateSecretKey",
        frozenset(),
        "bootstrap",
        lambda s, i, md: s.RotateSecretKey(pb.RotateSecretKeyRequest(), metadata=md),
    ),
]


def test_every_registry_rpc_is_in_the_matrix() -> None:
    rpcs = set(pb.DESCRIPTOR.services_by_name["Registry"].methods_by_name)
    covered = {c.name.split("[")[0].split("+")[0] for c in CASES}
    assert covered == rpcs


# -- the world -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def registry_m(
    module_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Registry]:
    """One registry for the whole matrix."""
    state = tmp_path_factory.mktemp("registry")
    async with running_registry(module_database, Path(state)) as running:
        yield running


@pytest.fixture(scope="module")
async def world(registry_m: Registry) -> World:
    """Create the workspace, its objects and a member per role."""
    r = registry_m
    ws, owner = await r.workspace("Matrix")
    _, outsider = await r.workspace("Elsewhere")
    w = World(r, f"workspaces/{ws}", {}, "", "", "", "", "", "", "", "", "")
    w.tokens = {OWNER: owner, OUTSIDER: outsider, BOOTSTRAP_ADMIN: BOOTSTRAP}
    w.tokens |= {SERVICE_TOKEN: SERVICE, ANONYMOUS: None}
    w.fn_a, w.ver_a = await w.function("A")
    w.fn_b, w.ver_b = await w.function("B")
    w.src_s, w.src_t = await w.source("S"), await w.source("T")
    w.ins_as = await w.instance(w.fn_a, w.src_s)
    w.ins_bt = await w.instance(w.fn_b, w.src_t)
    grants = {
        FN_ADMIN: res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN),
        FN_ADMIN_A: res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[w.fn_a]),
        FN_READ: res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY),
        FN_READ_A: res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[w.fn_a]),
        SRC_ADMIN: res.RoleGrant(role=res.ROLE_SOURCE_ADMIN),
        SRC_ADMIN_S: res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[w.src_s]),
    }
    for role, grant in grants.items():
        w.tokens[role] = await r.member(owner, role, grant)
    w.tokens[FN_ADMIN_SRC_ADMIN_S] = await r.member(
        owner, FN_ADMIN_SRC_ADMIN_S, grants[FN_ADMIN], grants[SRC_ADMIN_S]
    )
    w.target_member = (
        await r.stub.CreateMember(
            pb.CreateMemberRequest(
                parent=w.workspace,
                member=res.Member(
                    email="target", roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
                ),
            ),
            metadata=auth(owner),
        )
    ).member.name
    await w.token_of(w.target_member)  # a token of another member, whatever runs first
    for role in (*MEMBERS, OUTSIDER, BOOTSTRAP_ADMIN):
        who = await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(w.tokens[role] or ""))
        w.workspaces[role] = who.workspace.name
        w.self_names[role] = who.member.name
        if role in MEMBERS:
            w.member_names[role] = who.member.name
    w.workspaces[SERVICE_TOKEN] = w.workspaces[ANONYMOUS] = w.workspace
    return w


# -- the matrix ------------------------------------------------------------------------------


def _fake(real: str) -> str:
    """The same name with ids that never existed (the workspace's too)."""
    return "/".join(
        part.split("_")[0] + "_" + "0" * 20 if "_" in part else part for part in real.split("/")
    )


def _normalized(details: str | None, id_values: list[str]) -> str:
    out = details or ""
    for value in sorted(id_values, key=len, reverse=True):
        out = out.replace(value, "<id>")
    return re.sub(r"\s+", " ", out)


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_authz(case: Case, role: str, world: World) -> None:
    target = await case.setup(world, role) if case.setup else Target({})
    if case.scope == "own":  # the caller's own workspace
        target.ids.setdefault("parent", world.workspaces[role])
    token = target.token or world.tokens[role]
    md = auth(token) if token is not None else ()
    want = expected(case, role)
    got, result = await _outcome(case.call(world.r.stub, target.ids, md))
    detail = "" if got == OK else f": {result.details()}"
    assert got == want, f"{case.name} as {role}: expected {want.name}, got {got.name}{detail}"
    if got == OK and case.check:
        case.check(result, world, role)
    if got == NOT_FOUND:
        # The same call on ids that never existed must fail word for word the same way.
        fakes = {k: _fake(v) for k, v in target.ids.items() if k != "parent"}
        code, error = await _outcome(case.call(world.r.stub, fakes, md))
        assert code == NOT_FOUND
        values = [*target.ids.values(), *fakes.values()]
        values += ["/".join(v.split("/")[:2]) for v in values]  # the parents derived from them
        assert _normalized(error.details(), values) == _normalized(result.details(), values)
