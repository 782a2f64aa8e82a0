"""CLI commands of access and sources: members, tokens, sources, audit trail."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from google.protobuf import json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli.client import as_json_list, fail, metadata, out, pages, registry, table, when

Json = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
members = typer.Typer(help="Members of the workspace and their roles.", no_args_is_help=True)
tokens = typer.Typer(help="API tokens.", no_args_is_help=True)
sources = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)

ROLE_HELP = (
    "owner | functions-admin[:fn,..] | functions-read-only[:fn,..] | source-admin[:src,..]; "
    "repeatable"
)
ROLES = {
    "owner": res.ROLE_WORKSPACE_OWNER,
    "functions-admin": res.ROLE_FUNCTIONS_ADMIN,
    "functions-read-only": res.ROLE_FUNCTIONS_READ_ONLY,
    "source-admin": res.ROLE_SOURCE_ADMIN,
}


def parse_grant(text: str) -> res.RoleGrant:
    """Parse `role` or `role:id,id` into a grant."""
    role, _, ids = text.partition(":")
    if role not in ROLES:
        fail(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    listed = [i for i in ids.split(",") if i]
    if role == "source-admin":
        return res.RoleGrant(role=ROLES[role], source_ids=listed)
    return res.RoleGrant(role=ROLES[role], function_ids=listed)


def role_text(grants: Any) -> str:
    """Render role grants for a table."""
    names = {v: k for k, v in ROLES.items()}
    parts = []
    for g in grants:
        ids = list(g.function_ids) + list(g.source_ids)
        parts.append(names.get(g.role, "?") + (f":{','.join(ids)}" if ids else ""))
    return " ".join(parts)


# -- members ------------------------------------------------------------------------------


@members.command("create")
def member_create(
    email: str,
    role: Annotated[list[str], typer.Option(help=ROLE_HELP)],
) -> None:
    """Add a member with roles."""
    with registry() as r:
        resp = r.CreateMember(
            pb.CreateMemberRequest(email=email, roles=[parse_grant(x) for x in role]),
            metadata=metadata(),
        )
    out.print(
        f"member {resp.member.email} ({resp.member.id}) added: {role_text(resp.member.roles)}"
    )


@members.command("list")
def member_list(json_: Json = False) -> None:
    """List members."""
    with registry() as r:
        rows = list(pages(r.ListMembers, pb.ListMembersRequest(page_size=500), "members"))
    if json_:
        as_json_list(rows)
        return
    table(
        "members",
        ["id", "email", "roles", "created"],
        [[m.id, m.email, role_text(m.roles), when(m.create_time)] for m in rows],
    )


def member_id(r: Any, who: str) -> str:
    """Return the id of a member given by id or email."""
    if who.startswith("mem_"):
        return who
    found = [
        m.id
        for m in pages(r.ListMembers, pb.ListMembersRequest(page_size=500), "members")
        if m.email == who
    ]
    if not found:
        fail(f"no member {who!r} in this workspace; see `eventfn members list`")
    return found[0]


@members.command("set-roles")
def member_set_roles(
    member: Annotated[str, typer.Argument(help="Member id or email.")],
    role: Annotated[list[str], typer.Option(help=ROLE_HELP)],
) -> None:
    """Replace a member's roles."""
    with registry() as r:
        resp = r.UpdateMemberRoles(
            pb.UpdateMemberRolesRequest(
                member_id=member_id(r, member), roles=[parse_grant(x) for x in role]
            ),
            metadata=metadata(),
        )
    out.print(f"member {resp.member.email} ({resp.member.id}) now: {role_text(resp.member.roles)}")


@members.command("remove")
def member_remove(
    member: Annotated[str, typer.Argument(help="Member id or email.")],
) -> None:
    """Remove a member from the workspace and revoke its tokens."""
    with registry() as r:
        ident = member_id(r, member)
        r.DeleteMember(pb.DeleteMemberRequest(member_id=ident), metadata=metadata())
    out.print(f"member {member} removed; its tokens no longer work")


# -- tokens -------------------------------------------------------------------------------


@tokens.command("create")
def token_create(
    name: str,
    member: Annotated[str, typer.Option(help="Member id (default: yourself).")] = "",
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (0: never expires).")] = 0,
) -> None:
    """Create a token; the secret is shown once."""
    with registry() as r:
        resp = r.CreateToken(
            pb.CreateTokenRequest(member_id=member, name=name, ttl_seconds=ttl), metadata=metadata()
        )
    out.print(f"token {resp.token.id} created; secret (shown once): [bold]{resp.secret}[/]")


@tokens.command("list")
def token_list(json_: Json = False) -> None:
    """List tokens."""
    with registry() as r:
        rows = list(pages(r.ListTokens, pb.ListTokensRequest(page_size=500), "tokens"))
    if json_:
        as_json_list(rows)
        return
    table(
        "tokens",
        ["id", "name", "member", "prefix", "created", "expires", "revoked"],
        [
            [
                t.id,
                t.name,
                t.member_id,
                t.prefix + "…",
                when(t.create_time),
                when(t.expire_time),
                when(t.revoke_time),
            ]
            for t in rows
        ],
    )


@tokens.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token."""
    with registry() as r:
        r.RevokeToken(pb.RevokeTokenRequest(token_id=token_id), metadata=metadata())
    out.print(f"token {token_id} revoked")


# -- sources ------------------------------------------------------------------------------


@sources.command("create")
def source_create(name: str) -> None:
    """Create a source; prints its write key."""
    with registry() as r:
        resp = r.CreateSource(pb.CreateSourceRequest(name=name), metadata=metadata())
    out.print(
        f"source {resp.source.name} ({resp.source.id}) created; "
        f"write key: [bold]{resp.source.write_key}[/]"
    )


@sources.command("list")
def source_list(json_: Json = False) -> None:
    """List sources."""
    with registry() as r:
        rows = list(pages(r.ListSources, pb.ListSourcesRequest(page_size=500), "sources"))
    if json_:
        as_json_list(rows)
        return
    table(
        "sources",
        ["id", "name", "write key", "created"],
        [[s.id, s.name, s.write_key, when(s.create_time)] for s in rows],
    )


@sources.command("rotate")
def source_rotate(source_id: str) -> None:
    """Replace a source's write key (the old one stops working at once)."""
    with registry() as r:
        resp = r.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=source_id), metadata=metadata())
    out.print(f"new write key: [bold]{resp.source.write_key}[/]")


@sources.command("delete")
def source_delete(source_id: str) -> None:
    """Delete a source without instances."""
    with registry() as r:
        r.DeleteSource(pb.DeleteSourceRequest(source_id=source_id), metadata=metadata())
    out.print(f"source {source_id} deleted")


def compact_json(value: Any) -> str:
    """Render JSON on one line, with whole numbers (Struct stores doubles) as integers."""

    def ints(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: ints(x) for k, x in v.items()}
        if isinstance(v, list):
            return [ints(x) for x in v]
        return v

    return json.dumps(ints(value), separators=(",", ":"))


def audit(resource: str = "", limit: int = 50, json_: Json = False) -> None:
    """Show the audit trail, newest first."""
    with registry() as r:
        resp = r.ListAuditEvents(
            pb.ListAuditEventsRequest(resource_id=resource, page_size=limit), metadata=metadata()
        )
    if json_:
        as_json_list(resp.events)
        return
    table(
        "audit trail",
        ["when", "who", "action", "object", "details"],
        [
            [
                when(e.create_time),
                e.actor_email,
                e.action,
                e.resource_id,
                compact_json(json_format.MessageToDict(e.details)),
            ]
            for e in resp.events
        ],
    )
