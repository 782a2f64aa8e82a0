"""Issue 10, item 10: dead letters live in one stream for every workspace, so another
workspace's letter must answer exactly like one that does not exist, never naming its
instance; and replay, purge and list by another workspace's names reach nothing. (Names:
issue 13.) Their ids are the stream's sequences sealed: shown, the sequences counted the
other tenants' dead letters.

Dead letters are published straight to the DEAD stream, as the executor or the retrier would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2
from services.common import streams
from services.retrier.app import RunningRetrier
from tests.registry.conftest import HANDLER, SETTINGS, Registry, auth, registry
from tests.retrier.conftest import (
    RetrierClient,
    StartRetrier,
    lid,
    public_id,
    start_retrier_on,
)

__all__ = ["registry", "start_retrier_on"]

NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass
class Tenant:
    """A workspace with one instance, its owner's token and its DEAD letter's id."""

    workspace_id: str
    owner: str
    instance_id: str
    letter: str = ""

    @property
    def instance(self) -> str:
        """The instance's name."""
        return f"workspaces/{self.workspace_id}/instances/{self.instance_id}"

    def letter_name(self, place: str) -> str:
        """The name the letter at `<sequence>[.<index>]` of DEAD would have under this
        tenant's instance."""
        return f"{self.instance}/deadLetters/{public_id(place)}"


async def tenant(r: Registry, name: str) -> Tenant:
    ws, owner = await r.workspace(f"{name} {uuid.uuid4().hex[:6]}")
    md = auth(owner)
    parent = f"workspaces/{ws}"
    fn = await r.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name="Hook"),
            code=HANDLER,
            settings=SETTINGS,
        ),
        metadata=md,
    )
    src = await r.stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="web")), metadata=md
    )
    values = struct_pb2.Struct()
    values.update({"endpoint": "https://example.com/hook", "apiKey": "sk_1"})
    ins = await r.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(
                function=fn.function.name, source=src.source.name, settings=values
            ),
        ),
        metadata=md,
    )
    return Tenant(ws, owner, ins.instance.name.rsplit("/", 1)[-1])


async def bury(nats_client: NatsClient, t: Tenant, message_id: str) -> str:
    """Put a one-event pack on the tenant's DEAD subject; return its dead-letter id."""
    ack = await nats_client.jetstream().publish(
        streams.dead_subject(t.workspace_id, t.instance_id),
        orjson.dumps([{"type": "track", "event": "Secret order", "messageId": message_id}]),
        headers={streams.MSG_ID: f"dead-{uuid.uuid4().hex}", streams.DEAD_REASON: "test"},
    )
    return str(ack.seq)


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


World = tuple[Tenant, Tenant, RetrierClient, RunningRetrier]


@pytest.fixture
async def world(
    registry: Registry, start_retrier_on: StartRetrier, nats_client: NatsClient
) -> World:
    """Victim and attacker workspaces, the victim's dead letter, and a retrier."""
    running, stub = await start_retrier_on()
    victim, attacker = await tenant(registry, "Victim"), await tenant(registry, "Attacker")
    await running.watcher.wait_until(
        lambda v: {victim.instance_id, attacker.instance_id} <= set(v.instances)
    )
    victim.letter = await bury(nats_client, victim, "m-victim")
    attacker.letter = await bury(nats_client, attacker, "m-attacker")
    return victim, attacker, stub, running


async def test_another_workspaces_letter_is_not_found_word_for_word_like_a_missing_one(
    world: World,
) -> None:
    victim, attacker, stub, _ = world
    md = auth(attacker.owner)
    missing = str(int(victim.letter) + 1_000_000)
    for suffix in ("", ".0", ".7"):
        # By the victim's own name, and by the victim's sequence under the attacker's instance.
        for owner in (victim, attacker):
            theirs_name = owner.letter_name(victim.letter + suffix)
            absent_name = owner.letter_name(missing + suffix)
            theirs = await failure(
                stub.GetDeadLetter(retrier_pb2.GetDeadLetterRequest(name=theirs_name), metadata=md)
            )
            absent = await failure(
                stub.GetDeadLetter(retrier_pb2.GetDeadLetterRequest(name=absent_name), metadata=md)
            )
            assert theirs.code() == absent.code() == NOT_FOUND
            assert theirs.details() == f"dead letter {theirs_name!r} not found"
            assert absent.details() == f"dead letter {absent_name!r} not found"
            if owner is attacker:  # never names the instance the letter really belongs to
                assert victim.instance_id not in repr(theirs.trailing_metadata())
    # The owner still reads it, and the attacker its own.
    shown = await stub.GetDeadLetter(
        retrier_pb2.GetDeadLetterRequest(name=victim.letter_name(victim.letter)),
        metadata=auth(victim.owner),
    )
    assert shown.dead_letter.message_id == "m-victim"
    mine = await stub.GetDeadLetter(
        retrier_pb2.GetDeadLetterRequest(name=attacker.letter_name(attacker.letter)), metadata=md
    )
    assert mine.dead_letter.message_id == "m-attacker"


async def test_without_a_valid_token_existence_cannot_be_probed(world: World) -> None:
    victim, _, stub, _ = world
    for metadata in ((), auth("efn_made-up")):
        for letter in (victim.letter, str(int(victim.letter) + 1_000_000)):
            error = await failure(
                stub.GetDeadLetter(
                    retrier_pb2.GetDeadLetterRequest(name=victim.letter_name(letter)),
                    metadata=metadata,
                )
            )
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (letter, error.details())


async def test_a_member_who_cannot_see_the_instance_learns_nothing_of_its_letters(
    registry: Registry, world: World
) -> None:
    victim, _, stub, _ = world
    # Read-only of a function that is not the instance's: same workspace, no access to it.
    other = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=f"workspaces/{victim.workspace_id}",
            function=res.DestinationFunction(display_name="Other"),
            code=HANDLER,
            settings=SETTINGS,
        ),
        metadata=auth(victim.owner),
    )
    reader = await registry.member(
        victim.owner,
        "reader@victim.io",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[other.function.name]),
    )
    name = victim.letter_name(victim.letter)
    error = await failure(
        stub.GetDeadLetter(retrier_pb2.GetDeadLetterRequest(name=name), metadata=auth(reader))
    )
    assert error.code() == NOT_FOUND
    assert error.details() == f"dead letter {name!r} not found"


async def test_a_reader_replaying_the_owners_request_id_gets_no_operation(
    registry: Registry, world: World
) -> None:
    """A replay retried with its request_id answered the first call's operation to anyone who
    could read the instance: a Functions Read-only member who learned the owner's request_id
    got it. It is answered only to a caller who may replay."""
    victim, _, stub, _ = world
    request = retrier_pb2.ReplayDeadLettersRequest(
        parent=victim.instance, request_id=str(uuid.uuid4())
    )
    first = await stub.ReplayDeadLetters(request, metadata=auth(victim.owner))
    reader = await registry.member(
        victim.owner, "replayer@victim.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    error = await failure(stub.ReplayDeadLetters(request, metadata=auth(reader)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert first.name not in (error.details() or "")


async def test_a_stranger_learns_nothing_of_a_request_ids_use(world: World) -> None:
    """Sent with another workspace's instance and a request_id it used, a different replay
    was told "already used for a different ReplayDeadLetters request", even with no valid
    token: the request_id was looked up before the caller was checked. A used request_id
    now answers a stranger exactly as an unused one."""
    victim, attacker, stub, _ = world
    used = str(uuid.uuid4())
    await stub.ReplayDeadLetters(
        retrier_pb2.ReplayDeadLettersRequest(parent=victim.instance, request_id=used),
        metadata=auth(victim.owner),
    )
    for token in (attacker.owner, "efn_" + "x" * 43):
        answers = []
        for request_id in (used, str(uuid.uuid4())):
            other = retrier_pb2.ReplayDeadLettersRequest(
                parent=victim.instance, request_id=request_id, names=[victim.letter_name("1.0")]
            )
            error = await failure(stub.ReplayDeadLetters(other, metadata=auth(token)))
            answers.append((error.code(), error.details()))
        assert answers[0] == answers[1]
        assert answers[0][0] in (NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_reader_cannot_delete_the_record_of_a_replay(
    registry: Registry, world: World
) -> None:
    """Any member who could read the instance could delete a finished replay's operation,
    erasing for everyone the record of what was replayed. Deleting it needs what replaying
    does."""
    victim, _, stub, _ = world
    replay = await stub.ReplayDeadLetters(
        retrier_pb2.ReplayDeadLettersRequest(parent=victim.instance), metadata=auth(victim.owner)
    )
    done = await stub.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=replay.name), metadata=auth(victim.owner)
    )
    assert done.done
    reader = await registry.member(
        victim.owner, "eraser@victim.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    delete = operations_pb2.DeleteOperationRequest(name=replay.name)
    error = await failure(stub.operations.DeleteOperation(delete, metadata=auth(reader)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    kept = await stub.operations.GetOperation(
        operations_pb2.GetOperationRequest(name=replay.name), metadata=auth(reader)
    )
    assert kept.name == replay.name, "the reader still sees it: it was not deleted"
    await stub.operations.DeleteOperation(delete, metadata=auth(victim.owner))


async def test_list_replay_and_purge_reach_no_other_workspaces_letters(world: World) -> None:
    victim, attacker, stub, running = world
    md = auth(attacker.owner)
    made_up = f"workspaces/{attacker.workspace_id}/instances/ins_" + "0" * 20
    for instance in (victim.instance, made_up):
        letter = f"{instance}/deadLetters/{public_id(victim.letter)}"
        calls = [
            stub.ListDeadLetters(retrier_pb2.ListDeadLettersRequest(parent=instance), metadata=md),
            stub.ReplayDeadLetters(
                retrier_pb2.ReplayDeadLettersRequest(parent=instance, names=[letter]),
                metadata=md,
            ),
            stub.PurgeDeadLetters(
                retrier_pb2.PurgeDeadLettersRequest(parent=instance, names=[letter]),
                metadata=md,
            ),
        ]
        for call in calls:
            error = await failure(call)
            assert error.code() == NOT_FOUND
            assert error.details() == f"instance {instance!r} not found"
    # The victim's letter id on the attacker's own instance: refused word for word like an id
    # never used, and nothing happens to it.
    borrowed = attacker.letter_name(victim.letter)
    for call in (
        stub.ReplayDeadLetters(
            retrier_pb2.ReplayDeadLettersRequest(parent=attacker.instance, names=[borrowed]),
            metadata=md,
        ),
        stub.PurgeDeadLetters(
            retrier_pb2.PurgeDeadLettersRequest(parent=attacker.instance, names=[borrowed]),
            metadata=md,
        ),
    ):
        error = await failure(call)
        assert error.code() == NOT_FOUND
        assert error.details() == f"dead letter {borrowed!r} not found"
    # A letter name of another instance than `parent` is a malformed request.
    error = await failure(
        stub.ReplayDeadLetters(
            retrier_pb2.ReplayDeadLettersRequest(
                parent=attacker.instance, names=[victim.letter_name(victim.letter)]
            ),
            metadata=md,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names[0]" in (error.details() or "")
    assert await running.store.pack(int(victim.letter)) is not None


async def test_dead_letter_page_tokens_are_signed_and_bound_to_their_list(
    world: World, nats_client: NatsClient
) -> None:
    victim, attacker, stub, _ = world
    md = auth(victim.owner)
    for i in range(3):
        await bury(nats_client, victim, f"m-{i}")

    async def page(token: str, instance: str = victim.instance, who=md) -> Any:
        return await stub.ListDeadLetters(
            retrier_pb2.ListDeadLettersRequest(parent=instance, page_size=2, page_token=token),
            metadata=who,
        )

    first = await page("")
    assert first.next_page_token
    # A write between the pages: the next page goes on after the last letter returned.
    await bury(nats_client, victim, "m-new")
    second = await page(first.next_page_token)
    seen = [d.name for d in first.dead_letters] + [d.name for d in second.dead_letters]
    assert len(seen) == len(set(seen)) == 4
    # The old sequence-number cursor, a tampered token, another instance's or workspace's.
    for bad, instance, who in (
        (first.dead_letters[-1].name.rsplit("/", 1)[-1], victim.instance, md),
        (first.next_page_token[:-3] + "AAA", victim.instance, md),
        (first.next_page_token, attacker.instance, auth(attacker.owner)),
    ):
        error = await failure(page(bad, instance, who))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (error.details() or "")


async def test_letter_ids_do_not_count_other_workspaces_letters(
    world: World, nats_client: NatsClient
) -> None:
    """The attacker's two letters, the victim's seven between them: by their sequences, the
    gap counted them. Ids are sealed, and a sequence is no id (probing with numbers would
    find one's own letters' sequences)."""
    victim, attacker, stub, _ = world
    first = await bury(nats_client, attacker, "a-1")
    for i in range(7):
        await bury(nats_client, victim, f"v-{i}")
    second = await bury(nats_client, attacker, "a-2")
    listed = await stub.ListDeadLetters(
        retrier_pb2.ListDeadLettersRequest(parent=attacker.instance), metadata=auth(attacker.owner)
    )
    ids = {letter.message_id: lid(letter) for letter in listed.dead_letters}
    assert ids["a-2"] == public_id(second + ".0") and ids["a-1"] == public_id(first + ".0")
    for place in (first, second):
        error = await failure(
            stub.GetDeadLetter(
                retrier_pb2.GetDeadLetterRequest(name=f"{attacker.instance}/deadLetters/{place}.0"),
                metadata=auth(attacker.owner),
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not one this deployment gave" in (error.details() or "")
    # The id before its dot names the whole pack.
    whole = ids["a-2"].split(".")[0]
    purged = await stub.PurgeDeadLetters(
        retrier_pb2.PurgeDeadLettersRequest(
            parent=attacker.instance, names=[f"{attacker.instance}/deadLetters/{whole}"]
        ),
        metadata=auth(attacker.owner),
    )
    assert purged.purged == 1
