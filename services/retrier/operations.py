"""Replays as long-running operations (AIP-151), kept in a JetStream key-value bucket.

`ReplayDeadLetters` checks the request, records an operation and answers it at once; the
replay runs in the background, pack by pack, and writes its progress to the record, which
`GetOperation`, `ListOperations` and `WaitOperation` read. A request_id maps to its operation
for 24 hours, so a retried replay answers the same operation instead of replaying again. An
operation a stopped retrier left unfinished is taken over by the next retrier that starts
(a replayed letter has left DEAD, so going on replays only the rest); a running one's record
is written at least every KEEP_FRESH, however long a scan finds nothing to replay, so no
other retrier takes it over meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta

import nats.errors
import orjson
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from eventfn_api.retrier.v1 import retrier_pb2 as pb
from services.common import names
from services.common.errors import EventfnError, FailedPrecondition, RequestIdReused
from services.common.pull import NATS_ERRORS
from services.common.rpc import status_message, unexpected

log = logging.getLogger(__name__)
BUCKET = "eventfn_operations"
KEPT = timedelta(days=7)  # how long finished operations can be read
REQUEST_IDS_KEPT = timedelta(hours=24)
# An unfinished operation not written to for this long belongs to a retrier that stopped.
ABANDONED_AFTER = timedelta(seconds=30)
# A running operation's record is written at least this often (else it looks abandoned).
KEEP_FRESH = ABANDONED_AFTER / 3
CHUNK = 50  # letters replayed between two progress writes
_STREAM = f"KV_{BUCKET}"
# A KV entry's header naming a removal, and the removals.
_KV_OPERATION = "KV-Operation"
_KV_REMOVED = ("DEL", "PURGE")
READ_BATCH = 256  # records asked for at once when reading a key pattern
READ_SECONDS = 10.0
FETCH_SECONDS = 0.5  # a fetch this long without a message: ask the consumer what is pending
LISTED_AT_MOST = 100_000  # subjects a stream info lists in one answer (the server's page)


@dataclass
class ReplayRecord:
    """What the bucket keeps of one replay operation."""

    name: str
    instance: str
    actor: str
    digest: str = ""
    letter_ids: list[str] = field(default_factory=list)  # empty: all in the range
    start: str | None = None
    end: str | None = None
    version_id: str = ""
    # All letters (no letter_ids): those stored in DEAD at or before this sequence, its last
    # when the operation started (0 in records of older retriers: bounded when taken over).
    up_to_seq: int = 0
    total: int = 0  # all letters: counted by the operation, 0 until then
    replayed: int = 0
    done: bool = False
    error_code: int = 0
    error_message: str = ""
    error_status: str = ""  # a serialized google.rpc.Status, hex
    create_time: str = ""
    end_time: str = ""
    updated: float = 0.0

    @classmethod
    def load(cls, data: bytes) -> ReplayRecord:
        """Read a stored record (fields a newer retrier added are left out: rolling upgrades)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in orjson.loads(data).items() if k in known})

    def key(self) -> str:
        """Return the bucket key of the record."""
        workspace_id, operation_id = names.parse_operation("name", self.name)
        return f"op.{workspace_id}.{operation_id}"


def _timestamp(text: str) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.fromisoformat(text))
    return out


def operation_message(record: ReplayRecord) -> operations_pb2.Operation:
    """Describe a record as a google.longrunning.Operation."""
    metadata = any_pb2.Any()
    metadata.Pack(
        pb.ReplayDeadLettersMetadata(
            instance=record.instance,
            total=record.total,
            replayed=record.replayed,
            create_time=_timestamp(record.create_time),
            end_time=_timestamp(record.end_time),
        )
    )
    out = operations_pb2.Operation(name=record.name, metadata=metadata, done=record.done)
    if record.done and record.error_status:
        out.error.CopyFrom(status_pb2.Status.FromString(bytes.fromhex(record.error_status)))
    elif record.done:
        out.response.Pack(pb.ReplayDeadLettersResponse(replayed=record.replayed))
    return out


def request_digest(request: pb.ReplayDeadLettersRequest) -> str:
    """Digest a replay request without its request_id (a retry must send the same)."""
    copy = pb.ReplayDeadLettersRequest()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


# Writes a running operation's record with the count of letters replayed so far.
Progress = Callable[[int], Awaitable[None]]
# Replays the chosen letters of a record, calling back with the count after each chunk.
Runner = Callable[[ReplayRecord, Progress], Awaitable[int]]


class Operations:
    """Keep replay operations and run them."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._kv = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: dict[str, asyncio.Event] = {}

    async def open(self) -> None:
        """Open (or create) the bucket."""
        try:
            self._kv = await self._js.key_value(BUCKET)
        except BucketNotFoundError:
            self._kv = await self._js.create_key_value(
                bucket=BUCKET,
                history=1,
                ttl=KEPT.total_seconds(),
                replicas=self._replicas,
                description="eventfn retrier: replay operations and their request ids",
            )

    @property
    def kv(self):
        """Return the bucket (after `open`)."""
        if self._kv is None:
            raise RuntimeError("Operations.open() was not called")
        return self._kv

    async def read(self, name: str) -> ReplayRecord | None:
        """Return the record of an operation, or None."""
        workspace_id, operation_id = names.parse_operation("name", name)
        try:
            entry = await self.kv.get(f"op.{workspace_id}.{operation_id}")
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return ReplayRecord.load(entry.value)

    async def write(self, record: ReplayRecord) -> None:
        """Store a record's current state and wake whoever waits on it."""
        record.updated = time.time()
        await self.kv.put(record.key(), orjson.dumps(asdict(record)))
        event = self._changed.pop(record.name, None)
        if event is not None:
            event.set()

    async def remove(self, name: str) -> None:
        """Forget an operation."""
        workspace_id, operation_id = names.parse_operation("name", name)
        await self.kv.delete(f"op.{workspace_id}.{operation_id}")

    async def list(self, workspace_id: str) -> list[ReplayRecord]:
        """Return a workspace's operations, newest first."""
        records = await self._records(f"op.{workspace_id}.*")
        return sorted(records, key=lambda r: r.create_time, reverse=True)

    async def _records(self, keys: str) -> list[ReplayRecord]:
        """Return the records under a key pattern as they were when asked (or since): the
        keys listed by the server, then a pull consumer of each key's last message, read until
        every listed key came (or went) and each key's last record kept; READ_SECONDS at most.

        (nats-py's `keys()` watched every workspace's keys, request ids too, and filtered them
        here, then a `get` per key: 1,500 of one workspace's made every workspace's list 10
        times slower. Its watch says "no more" when the consumer reports nothing pending
        before any entry came, as it does while others write: lists came back empty. Counting
        to the number pending at the start, a key rewritten meanwhile came twice and took
        another's place, and one expired meanwhile was waited for.)"""
        subject = f"$KV.{BUCKET}.{keys}"
        listed = (await self._js.stream_info(_STREAM, subjects_filter=subject)).state.subjects
        awaited = set(listed or ())
        complete = len(awaited) < LISTED_AT_MOST  # else: until nothing is pending
        sub = await self._js.pull_subscribe(
            subject,
            stream=_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                mem_storage=True,
                inactive_threshold=READ_SECONDS,
            ),
        )
        latest: dict[str, bytes | None] = {}  # by key: its last record, None once removed
        name = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_SECONDS
        try:
            info = await sub.consumer_info()
            name, left = info.name, info.num_pending or 0
            while left > 0 and not (complete and not awaited):
                wait = min(deadline - loop.time(), FETCH_SECONDS)
                if wait <= 0:
                    log.warning("operations under %s: read for %.0f s", keys, READ_SECONDS)
                    break
                try:
                    msgs = await sub.fetch(min(left, READ_BATCH), timeout=wait)
                except nats.errors.TimeoutError:  # expired meanwhile, or a slow server
                    left = (await sub.consumer_info()).num_pending or 0
                    continue
                for msg in msgs:
                    left = msg.metadata.num_pending or 0
                    awaited.discard(msg.subject)
                    removed = (msg.headers or {}).get(_KV_OPERATION) in _KV_REMOVED
                    latest[msg.subject] = None if removed or not msg.data else msg.data
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()
                if name:  # else it goes once inactive
                    await self._js.delete_consumer(_STREAM, name)
        return [ReplayRecord.load(data) for data in latest.values() if data]

    async def wait(self, name: str, seconds: float) -> ReplayRecord | None:
        """Return the record once it is done, or as it is after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            record = await self.read(name)
            left = deadline - time.monotonic()
            if record is None or record.done or left <= 0:
                return record
            event = self._changed.setdefault(name, asyncio.Event())
            # Another retrier may be running it: look again at least every second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 1.0))

    def _request_key(self, workspace_id: str, request_id: str) -> str:
        digest = hashlib.sha256(request_id.lower().encode()).hexdigest()[:40]
        return f"req.{workspace_id}.{digest}"

    async def earlier(self, workspace_id: str, request_id: str, digest: str) -> ReplayRecord | None:
        """Return the operation a request_id started within 24 hours, or None."""
        try:
            entry = await self.kv.get(self._request_key(workspace_id, request_id))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        kept = orjson.loads(entry.value)
        if time.time() - kept["at"] > REQUEST_IDS_KEPT.total_seconds():
            return None
        if kept["digest"] != digest:
            raise RequestIdReused("ReplayDeadLetters")
        record = await self.read(kept["name"])
        if record is None:  # a retry must not replay again, nor can it answer the operation
            raise FailedPrecondition(
                f"the replay this request_id started ({kept['name']}) was deleted "
                "(DeleteOperation); to replay again, send a new request_id"
            )
        return record

    async def claim(self, workspace_id: str, request_id: str, record: ReplayRecord) -> bool:
        """Tie a request_id to a new operation; False when a twin got there first."""
        value = orjson.dumps({"name": record.name, "digest": record.digest, "at": time.time()})
        key = self._request_key(workspace_id, request_id)
        try:
            await self.kv.create(key, value)
        except KeyWrongLastSequenceError:
            return False
        return True

    @staticmethod
    def new_record(
        workspace_id: str, instance: str, actor: str, digest: str, **choice: object
    ) -> ReplayRecord:
        """Make the record of a new operation."""
        return ReplayRecord(
            name=names.operation(workspace_id, f"op_{uuid.uuid4().hex[:20]}"),
            instance=instance,
            actor=actor,
            digest=digest,
            create_time=datetime.now(UTC).isoformat(),
            **choice,  # type: ignore[arg-type]
        )

    def run(self, record: ReplayRecord, runner: Runner) -> None:
        """Run a replay in the background, writing its progress and its end."""

        async def progress(replayed: int) -> None:
            record.replayed = replayed
            await self.write(record)

        finished = asyncio.Event()

        async def keep_fresh() -> None:
            # Ends when told, not only when cancelled: Python 3.11's wait_for (under a write)
            # loses a cancellation that comes as its wait ends, and this loop then ran on,
            # the end never written and the operation running for ever.
            while not finished.is_set():
                await asyncio.sleep(KEEP_FRESH.total_seconds())
                if finished.is_set():
                    return
                with contextlib.suppress(*NATS_ERRORS):  # the next write tries again
                    await self.write(record)

        async def body() -> None:
            fresh = asyncio.create_task(keep_fresh(), name=f"keep {record.name} fresh")
            try:
                record.replayed = await runner(record, progress)
            except EventfnError as error:
                record.error_status = status_message(error).SerializeToString().hex()
            except asyncio.CancelledError:
                raise  # stopping: the next retrier takes the operation over
            except Exception as error:  # a bug: logged under a correlation id
                failure = unexpected("ReplayDeadLetters operation", error)
                record.error_status = status_message(failure).SerializeToString().hex()
            finally:
                finished.set()
                fresh.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fresh
            record.done = True
            record.end_time = datetime.now(UTC).isoformat()
            await self.write(record)

        task = asyncio.create_task(body(), name=f"replay {record.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self, runner: Runner) -> int:
        """Take over the unfinished operations of retriers that stopped; return how many."""
        taken = 0
        for record in await self._records("op.>"):
            stale = time.time() - record.updated > ABANDONED_AFTER.total_seconds()
            if not record.done and stale:
                log.info("taking over the unfinished replay %s", record.name)
                await self.write(record)  # fresh: no other retrier takes it too
                self.run(record, runner)
                taken += 1
        return taken

    async def close(self) -> None:
        """Stop the replays this process runs (another retrier takes them over)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
