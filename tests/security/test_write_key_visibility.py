"""A source's write key sends events to every instance on it, and so out to production
destinations with the owner's secret settings. Every member could read every source's key
(GetSource, ListSources), so a rotation after a leak kept no member with a read-only role
out. It is given only to whoever may administer the source."""

from __future__ import annotations

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, make_source, registry, ws

__all__ = ["registry"]


async def test_only_who_may_administer_a_source_reads_its_write_key(registry: Registry) -> None:
    r = registry
    ws_id, owner = await r.workspace("Keys")
    mine = await make_source(r, owner, "mine")
    other = await make_source(r, owner, "other")
    fn = await r.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=ws(ws_id),
            function=res.DestinationFunction(display_name="f"),
            code="async function onTrack(event) {}",
        ),
        metadata=auth(owner),
    )
    members = {
        "owner": owner,
        "source admin of mine": await r.member(
            owner, "sa@keys.io", res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[mine.name])
        ),
        "functions read-only": await r.member(
            owner, "ro@keys.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
        ),
        "functions admin of f": await r.member(
            owner,
            "fa@keys.io",
            res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[fn.function.name]),
        ),
    }
    may = {"owner": {mine.name, other.name}, "source admin of mine": {mine.name}}
    for who, token in members.items():
        listed = await r.stub.ListSources(
            pb.ListSourcesRequest(parent=ws(ws_id)), metadata=auth(token)
        )
        got = {
            s.name: (
                await r.stub.GetSource(pb.GetSourceRequest(name=s.name), metadata=auth(token))
            ).source.write_key
            for s in listed.sources
        }
        assert set(got) == {mine.name, other.name}, who  # every member still sees the sources
        keys = {mine.name: mine.write_key, other.name: other.write_key}
        expected = {n: (keys[n] if n in may.get(who, set()) else "") for n in keys}
        assert got == expected, who
        assert {s.name: s.write_key for s in listed.sources} == expected, who
