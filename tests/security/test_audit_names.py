"""An audit entry's name says nothing of other workspaces. Named by a row number shared by
every workspace, a tenant's two entries bracketed the others' changes: the gap between their
numbers counted them (an owner renamed its own source, another tenant made seven changes, a
second rename: the numbers were eight apart)."""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, make_source, registry, ws

__all__ = ["registry"]


async def _rename(r: Registry, token: str, name: str, display: str) -> None:
    got = await r.stub.GetSource(pb.GetSourceRequest(name=name), metadata=auth(token))
    await r.stub.UpdateSource(
        pb.UpdateSourceRequest(
            source=res.Source(name=name, display_name=display, etag=got.source.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth(token),
    )


async def test_audit_names_do_not_count_other_workspaces_changes(registry: Registry) -> None:
    r = registry
    attacker_ws, attacker = await r.workspace("Attacker")
    _, victim = await r.workspace("Victim")
    mine = await make_source(r, attacker, "probe")
    theirs = await make_source(r, victim, "business")
    await _rename(r, attacker, mine.name, "probe 1")
    for i in range(7):
        await _rename(r, victim, theirs.name, f"business {i}")
    await _rename(r, attacker, mine.name, "probe 2")

    listed = await r.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=ws(attacker_ws), page_size=2), metadata=auth(attacker)
    )
    newest, before = listed.events
    tails = []
    for event in (newest, before):
        entry_id = event.name.rsplit("/auditEvents/", 1)[1]
        # Its own millisecond (the time the entry shows anyway), then random bits.
        millisecond = event.create_time.seconds * 1000 + event.create_time.nanos // 1_000_000
        assert entry_id.startswith(f"aud_{millisecond:012x}"), entry_id
        tails.append(int(entry_id[len("aud_") + 12 :], 16))
    assert abs(tails[0] - tails[1]) > 2**32  # not a counter (fails once in 2**31 runs)
