"""Issue 10, item 9 (first half): control characters in any string of any request are refused
with INVALID_ARGUMENT naming the field, before anything is done or stored.

A NUL used to reach PostgreSQL, whose error carried the statement (a token's secret_hash, a
sealed setting) back to the caller. Tab, newline and carriage return stay allowed: code, event
JSON and PEM keys in settings need them.
"""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2
from eventfn_api.router.v1 import router_pb2, router_pb2_grpc
from services.common.request_text import MAX_VIOLATIONS, control_character_violations
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import HANDLER, SETTINGS, Registry, auth, registry
from tests.retrier.conftest import StartRetrier, start_retrier_on

__all__ = ["platform", "registry", "sink", "start_retrier_on"]

PEM = "-----BEGIN PRIVATE KEY-----\r\nMIIBVQIBADAN\tBgkqhkiG9w0BAQ==\n-----END PRIVATE KEY-----\n"


def struct(values: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def fields(message: Message) -> list[str]:
    return [v.field for v in control_character_violations(message)]


# -- the walk, without a server ----------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"])
def test_nul_and_other_controls_are_found(char: str) -> None:
    assert fields(pb.CreateTokenRequest(token=res.Token(display_name=f"ci{char}"))) == [
        "token.display_name"
    ]


def test_tab_newline_and_carriage_return_are_allowed_everywhere() -> None:
    request = pb.UpdateInstanceRequest(
        instance=res.Instance(name="ins_1", display_name="a\tb", settings=struct({"pem": PEM}))
    )
    assert fields(request) == []
    assert fields(pb.CreateFunctionRequest(code=HANDLER.replace("\n", "\r\n"))) == []


def test_strings_nested_in_messages_lists_structs_and_maps_are_named_by_path() -> None:
    request = pb.CreateMemberRequest(
        member=res.Member(
            email="dev@acme.io",
            roles=[
                res.RoleGrant(role=res.ROLE_SOURCE_ADMIN),
                res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=["fn_1", "fn\x002"]),
            ],
        )
    )
    assert fields(request) == ["member.roles[1].functions[1]"]
    settings = struct(
        {
            "apiKey": "sk\x00live",
            "nested": {"deep": [1, "ok", {"x": "a\x1bb"}]},
            "k\x00ey": "fine",
            "list": ["\x85"],
        }
    )
    found = fields(pb.UpdateInstanceRequest(instance=res.Instance(name="ins_1", settings=settings)))
    assert sorted(found) == sorted(
        [
            "instance.settings.apiKey",
            "instance.settings.nested.deep[2].x",
            "instance.settings (key 'k\\\\x00ey')",
            "instance.settings.list[0]",
        ]
    )
    # Map fields (none in eventfn's requests today): keys and values both.
    info = error_details_pb2.ErrorInfo(reason="r", metadata={"k\x01": "v", "k": "v\x02"})
    assert sorted(fields(info)) == ["metadata (key 'k\\\\x01')", "metadata['k']"]


def test_bytes_fields_are_not_text() -> None:
    request = router_pb2.IngestRequest(write_key="wk", events_json=b"[\x00]")
    assert fields(request) == []


def test_a_flood_of_bad_strings_gets_a_bounded_answer() -> None:
    request = pb.CreateMemberRequest(
        member=res.Member(roles=[res.RoleGrant(functions=["\x00"] * 10_000)], email="\x00")
    )
    assert len(fields(request)) == MAX_VIOLATIONS


# -- every service refuses them, and nothing is stored -------------------------------------------


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """Return the BadRequest field names of an INVALID_ARGUMENT status."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out


async def refused(call) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return bad_fields(caught.value)


async def test_registry_refuses_control_characters_and_stores_nothing(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Text")
    parent = f"workspaces/{ws_id}"
    md = auth(owner)
    stub = registry.stub
    fn = await stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name="Hook"),
            code=HANDLER,
            settings=SETTINGS,
        ),
        metadata=md,
    )
    src = await stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="web")), metadata=md
    )
    ins = await stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(
                function=fn.function.name,
                source=src.source.name,
                settings=struct({"endpoint": "https://example.com/hook", "apiKey": "sk_1"}),
            ),
        ),
        metadata=md,
    )
    tokens_before = await stub.ListTokens(
        pb.ListTokensRequest(parent=parent, page_size=500), metadata=md
    )
    audit_before = await stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=parent), metadata=md)

    # The three: CreateToken's INSERT, GetSource's SELECT, UpdateInstance's sealed value.
    assert await refused(
        stub.CreateToken(
            pb.CreateTokenRequest(parent=parent, token=res.Token(display_name="ci\x00")),
            metadata=md,
        )
    ) == ["token.display_name"]
    assert await refused(
        stub.GetSource(pb.GetSourceRequest(name=src.source.name + "\x00"), metadata=md)
    ) == ["name"]
    update = pb.UpdateInstanceRequest(
        instance=res.Instance(
            name=ins.instance.name,
            settings=struct({"endpoint": "https://example.com/x", "apiKey": "sk\x00_2"}),
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
    )
    assert await refused(stub.UpdateInstance(update, metadata=md)) == ["instance.settings.apiKey"]
    # Nested deeper, C0 and C1, several at once, each named.
    assert await refused(
        stub.CreateMember(
            pb.CreateMemberRequest(
                parent=parent,
                member=res.Member(
                    email="dev\x1b@acme.io",
                    roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=["fn\x85"])],
                ),
            ),
            metadata=md,
        )
    ) == ["member.email", "member.roles[0].functions[0]"]
    assert await refused(
        stub.CreateFunction(
            pb.CreateFunctionRequest(
                parent=parent,
                function=res.DestinationFunction(display_name="Other"),
                code=HANDLER + "\x00",
                settings=SETTINGS,
            ),
            metadata=md,
        )
    ) == ["code"]
    assert await refused(
        stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(name=ins.instance.name, filters=['event = "a\x00"']),
                update_mask=field_mask_pb2.FieldMask(paths=["filters"]),
            ),
            metadata=md,
        )
    ) == ["instance.filters[0]"]
    # Even before authentication: no token, still the field is named and nothing runs.
    assert await refused(stub.GetSource(pb.GetSourceRequest(name="\x00"))) == ["name"]

    tokens_after = await stub.ListTokens(
        pb.ListTokensRequest(parent=parent, page_size=500), metadata=md
    )
    assert [t.name for t in tokens_after.tokens] == [t.name for t in tokens_before.tokens]
    members = await stub.ListMembers(
        pb.ListMembersRequest(parent=parent, page_size=500), metadata=md
    )
    assert all("dev" not in m.email for m in members.members)
    functions = await stub.ListFunctions(
        pb.ListFunctionsRequest(parent=parent, page_size=500), metadata=md
    )
    assert [f.display_name for f in functions.functions] == ["Hook"]
    after = await stub.GetInstance(pb.GetInstanceRequest(name=ins.instance.name), metadata=md)
    assert after.instance.etag == ins.instance.etag
    assert after.instance.settings["endpoint"] == "https://example.com/hook"
    assert list(after.instance.filters) == []
    audit_after = await stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=parent), metadata=md)
    assert [e.name for e in audit_after.events] == [e.name for e in audit_before.events]

    # What free text needs still goes through: a PEM key with CR, LF and tab, and code with them.
    pem_update = pb.UpdateInstanceRequest(
        instance=res.Instance(
            name=ins.instance.name, settings=struct({"endpoint": PEM.strip(), "apiKey": "sk_3"})
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
    )
    changed = await stub.UpdateInstance(pem_update, metadata=md)
    assert changed.instance.settings["endpoint"] == PEM.strip()
    await stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=fn.function.name, code="\t" + HANDLER.replace("\n", "\r\n"), settings=SETTINGS
        ),
        metadata=md,
    )


async def test_router_executor_and_retrier_refuse_control_characters(
    platform: Platform, start_retrier_on: StartRetrier
) -> None:
    md = auth(platform.owner)
    _, retrier = await start_retrier_on()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        assert await refused(
            executor.Preview(
                executor_pb2.PreviewRequest(
                    code="async function onTrack() {}",
                    event_json='{"type": "track", "event": "a\x00"}',
                ),
                metadata=md,
            )
        ) == ["event_json"]
        assert await refused(
            executor.Preview(
                executor_pb2.PreviewRequest(
                    code="async function onTrack() {}",
                    event_json='{"type": "track"}',
                    settings=struct({"headers": [{"x-api": "k\x7f"}]}),
                ),
                metadata=md,
            )
        ) == ["settings.headers[0].x-api"]
        assert await refused(
            executor.ListDeliveryMinutes(
                executor_pb2.ListDeliveryMinutesRequest(parent="ins_\x00"), metadata=md
            )
        ) == ["parent"]
    assert await refused(
        retrier.GetDeadLetter(retrier_pb2.GetDeadLetterRequest(name="1\x00"), metadata=md)
    ) == ["name"]
    assert await refused(
        retrier.ReplayDeadLetters(
            retrier_pb2.ReplayDeadLettersRequest(parent="ins_1", names=["1", "\x002"]),
            metadata=md,
        )
    ) == ["names[1]"]

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.router.grpc_port}") as channel:
        router = router_pb2_grpc.RouterStub(channel)
        events = orjson.dumps([{"type": "track", "userId": "u1", "event": "x"}])
        assert await refused(
            router.Ingest(
                router_pb2.IngestRequest(write_key=platform.write_key + "\x00", events_json=events)
            )
        ) == ["write_key"]
        # A stream: the first batch is stored and answered, the bad second one ends the call.
        good = router_pb2.IngestStreamRequest(write_key=platform.write_key, events_json=events)
        bad = router_pb2.IngestStreamRequest(write_key="\x00", events_json=events)
        call = router.IngestStream()
        await call.write(good)
        first = await call.read()
        assert first.accepted == 1
        await call.write(bad)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert bad_fields(caught.value) == ["write_key"]
