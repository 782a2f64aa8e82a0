"""CLI commands of access and sources: members, tokens, sources, audit trail."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.cli.client import (
    ID_KINDS,
    as_json_list,
    fail,
    metadata,
    name,
    out,
    pages,
    registry,
    safe,
    short,
    table,
    when,
    workspace,
)
from services.common import names

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
        return res.RoleGrant(role=ROLES[role], sources=[name(i, names.SOURCE) for i in listed])
    return res.RoleGrant(role=ROLES[role], functions=[name(i, names.FUNCTION) for i in listed])


def parse_grants(texts: list[str]) -> list[res.RoleGrant]:
    """Parse `--role` values into grants, one a role: `functions-admin:fn_a` and
    `functions-admin:fn_b` cover both functions (the API takes each role once), and a role
    given without names covers all."""
    merged: dict[int, res.RoleGrant] = {}
    for grant in map(parse_grant, texts):
        kept = merged.setdefault(grant.role, grant)
        if kept is grant:
            continue
        for field in ("functions", "sources"):
            ours, theirs = getattr(kept, field), getattr(grant, field)
            if not ours or not theirs:  # one of them covers all
                kept.ClearField(field)
            else:
                ours.extend(n for n in theirs if n not in ours)
    return list(merged.values())


def role_text(grants: Any) -> str:
    """Render role grants for a table."""
    by_number = {v: k for k, v in ROLES.items()}
    parts = []
    for g in grants:
        ids = [short(n) for n in list(g.functions) + list(g.sources)]
        parts.append(by_number.get(g.role, "?") + (f":{','.join(ids)}" if ids else ""))
    return " ".join(parts)


def request_id() -> str:
    """Make the request_id of one command's create call."""
    return str(uuid.uuid4())


# -- members ------------------------------------------------------------------------------


@members.command("create")
def member_create(
    email: str,
    role: Annotated[list[str], typer.Option(help=ROLE_HELP)],
) -> None:
    """Add a member with roles."""
    with registry() as r:
        resp = r.CreateMember(
            pb.CreateMemberRequest(
                parent=workspace(),
                member=res.Member(email=email, roles=parse_grants(role)),
                request_id=request_id(),
            ),
            metadata=metadata(),
        )
    out.print(
        f"member {safe(resp.member.email)} ({short(resp.member.name)}) added: "
        f"{role_text(resp.member.roles)}"
    )


def all_members(r: Any) -> list[Any]:
    """Return every member of the workspace."""
    return list(
        pages(r.ListMembers, pb.ListMembersRequest(parent=workspace(), page_size=500), "members")
    )


@members.command("list")
def member_list(json_: Json = False) -> None:
    """List members."""
    with registry() as r:
        rows = all_members(r)
    if json_:
        as_json_list(rows)
        return
    table(
        "members",
        ["id", "email", "roles", "created"],
        [[short(m.name), m.email, role_text(m.roles), when(m.create_time)] for m in rows],
    )


def member_of(r: Any, who: str) -> Any:
    """Return a member given by id, name or email."""
    if who.startswith("mem_") or "/" in who:
        return r.GetMember(
            pb.GetMemberRequest(name=name(who, names.MEMBER)), metadata=metadata()
        ).member
    found = [m for m in all_members(r) if m.email == who]
    if not found:
        fail(f"no member {who!r} in this workspace; see `eventfn members list`")
    return found[0]


@members.command("set-roles")
def member_set_roles(
    member: Annotated[str, typer.Argument(help="Member id or email.")],
    role: Annotated[list[str], typer.Option(help=ROLE_HELP)],
) -> None:
    """Replace a member's roles (refused when someone changed them since they were read)."""
    with registry() as r:
        current = member_of(r, member)
        resp = r.UpdateMember(
            pb.UpdateMemberRequest(
                member=res.Member(name=current.name, roles=parse_grants(role), etag=current.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
            ),
            metadata=metadata(),
        )
    out.print(
        f"member {safe(resp.member.email)} ({short(resp.member.name)}) now: "
        f"{role_text(resp.member.roles)}"
    )


@members.command("remove")
def member_remove(
    member: Annotated[str, typer.Argument(help="Member id or email.")],
) -> None:
    """Remove a member from the workspace and revoke its tokens."""
    with registry() as r:
        current = member_of(r, member)
        r.DeleteMember(
            pb.DeleteMemberRequest(name=current.name, etag=current.etag), metadata=metadata()
        )
    out.print(f"member {member} removed; its tokens no longer work")


# -- tokens -------------------------------------------------------------------------------


@tokens.command("create")
def token_create(
    token_name: Annotated[str, typer.Argument(metavar="NAME", help="A label, e.g. ci.")],
    member: Annotated[str, typer.Option(help="Member id (default: yourself).")] = "",
    ttl: Annotated[
        int,
        typer.Option(
            help="Lifetime in seconds (0: never expires). Run with a token that expires, the "
            "new one expires by then too: 0 means at the same time; a longer --ttl is refused."
        ),
    ] = 0,
) -> None:
    """Create a token; the secret is shown once."""
    lifetime = None
    if ttl:
        lifetime = duration_pb2.Duration()
        lifetime.FromSeconds(ttl)
    with registry() as r:
        resp = r.CreateToken(
            pb.CreateTokenRequest(
                parent=workspace(),
                token=res.Token(
                    member=name(member, names.MEMBER) if member else "", display_name=token_name
                ),
                ttl=lifetime,
                request_id=request_id(),
            ),
            metadata=metadata(),
        )
    expires = when(resp.token.expire_time)
    out.print(
        f"token {short(resp.token.name)} created"
        + (f", expires {expires}" if expires else ", never expires")
        + f"; secret (shown once): [bold]{resp.secret}[/]"
    )


@tokens.command("list")
def token_list(json_: Json = False) -> None:
    """List tokens."""
    with registry() as r:
        rows = list(
            pages(r.ListTokens, pb.ListTokensRequest(parent=workspace(), page_size=500), "tokens")
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "tokens",
        ["id", "name", "member", "prefix", "created", "expires", "revoked"],
        [
            [
                short(t.name),
                t.display_name,
                short(t.member),
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
        r.RevokeToken(pb.RevokeTokenRequest(name=name(token_id, names.TOKEN)), metadata=metadata())
    out.print(f"token {token_id} revoked")


# -- sources ------------------------------------------------------------------------------


@sources.command("create")
def source_create(source_name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Create a source; prints its write key."""
    with registry() as r:
        resp = r.CreateSource(
            pb.CreateSourceRequest(
                parent=workspace(),
                source=res.Source(display_name=source_name),
                request_id=request_id(),
            ),
            metadata=metadata(),
        )
    out.print(
        f"source {safe(resp.source.display_name)} ({short(resp.source.name)}) created; "
        f"write key: [bold]{resp.source.write_key}[/]"
    )


# Shown for a source whose write key the member may not see.
HIDDEN_KEY = "(Source Admin only)"


@sources.command("list")
def source_list(json_: Json = False) -> None:
    """List sources."""
    with registry() as r:
        rows = list(
            pages(
                r.ListSources, pb.ListSourcesRequest(parent=workspace(), page_size=500), "sources"
            )
        )
    if json_:
        as_json_list(rows)
        return
    table(
        "sources",
        ["id", "name", "write key", "created"],
        [
            [short(s.name), s.display_name, s.write_key or HIDDEN_KEY, when(s.create_time)]
            for s in rows
        ],
    )


@sources.command("rename")
def source_rename(source_id: str, new_name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Rename a source."""
    with registry() as r:
        current = r.GetSource(
            pb.GetSourceRequest(name=name(source_id, names.SOURCE)), metadata=metadata()
        ).source
        resp = r.UpdateSource(
            pb.UpdateSourceRequest(
                source=res.Source(name=current.name, display_name=new_name, etag=current.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=metadata(),
        )
    out.print(f"source {short(resp.source.name)} renamed to {safe(repr(resp.source.display_name))}")


@sources.command("rotate")
def source_rotate(source_id: str) -> None:
    """Replace a source's write key (the old one stops working at once)."""
    with registry() as r:
        resp = r.RotateWriteKey(
            pb.RotateWriteKeyRequest(name=name(source_id, names.SOURCE), request_id=request_id()),
            metadata=metadata(),
        )
    out.print(f"new write key: [bold]{resp.source.write_key}[/]")


@sources.command("delete")
def source_delete(source_id: str) -> None:
    """Delete a source without instances."""
    with registry() as r:
        r.DeleteSource(
            pb.DeleteSourceRequest(name=name(source_id, names.SOURCE)), metadata=metadata()
        )
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


def resource_name(value: str) -> str:
    """Return the name of a resource given by id (its prefix says its kind) or name."""
    if not value or "/" in value:
        return value
    if value.startswith("ws_"):
        return f"workspaces/{value}"
    kind = ID_KINDS.get(value.split("_", 1)[0])
    if kind is None:
        fail(f"{value!r} is not an id eventfn gives (src_…, fn_…, ins_…, mem_…, tok_…) or a name")
    return name(value, kind)


def audit(resource: str = "", limit: int = 50, json_: Json = False) -> None:
    """Show the audit trail, newest first."""
    with registry() as r:
        resp = r.ListAuditEvents(
            pb.ListAuditEventsRequest(
                parent=workspace(), resource=resource_name(resource), page_size=limit
            ),
            metadata=metadata(),
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
                action_text(e.action),
                short(e.resource),
                compact_json(json_format.MessageToDict(e.details)),
            ]
            for e in resp.events
        ],
    )


def action_text(action: int) -> str:
    """Render an audit action as people read it, e.g. "function.save"."""
    text = res.AuditAction.Name(action).removeprefix("AUDIT_ACTION_").lower()  # type: ignore[arg-type]
    area, _, verb = text.partition("_")
    if area == "dead":
        return "dead." + verb.removeprefix("letters_")
    if area == "secret":  # SECRET_KEY_ROTATE -> secret_key.rotate
        return "secret_key." + verb.removeprefix("key_")
    return f"{area}.{verb}"
