"""The JetStream topology shared by router, executor and retrier: streams, subjects, headers.

Subjects are `<kind>.<workspace_id>.<instance_id>` for the three kinds:

- `EVENTS` (`events.>`): packs from the router (and due retries from the retrier),
  consumed by the executor pool. Deduplicated over a 10-minute window by `Nats-Msg-Id`.
- `RETRY` (`retry.>`): events the executor found retryable, held by the retrier until due;
  at most `retry_max_per_instance` messages per instance, so one tenant's retry storm
  neither fills the disk the streams share nor makes everyone's re-checks slow.
- `DEAD` (`dead.>`): events past the retry window, kept (default 14 days) for listing and replay;
  at most `dead_max_per_instance` messages per instance, so what one tenant's failures store
  is bounded too (its failed events past that are discarded, saying why).

All three use limits retention (any consumer kind and ack policy works, and nothing is
dropped for lack of a consumer) with `discard: new`, so a full stream refuses new
publishes rather than dropping stored, unprocessed events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from services.common.settings import CommonSettings, nats_servers

log = logging.getLogger(__name__)

EVENTS_STREAM = "EVENTS"
RETRY_STREAM = "RETRY"
DEAD_STREAM = "DEAD"

DEDUPE_WINDOW = timedelta(minutes=10)
# RETRY and DEAD keep the server's default window for the Nats-Msg-Id of hand-offs and
# retries. Said explicitly: left unset (0), the server reports 2 minutes back, which read as
# drift and updated both streams at every start.
SERVER_DEDUPE_WINDOW = timedelta(minutes=2)
DEFAULT_EVENTS_MAX_AGE = timedelta(days=7)
DEFAULT_RETRY_MAX_AGE = timedelta(days=2)
DEFAULT_DEAD_MAX_AGE = timedelta(days=14)
DEFAULT_RETRY_MAX_PER_INSTANCE = 100_000
# Ten times RETRY's: past RETRY's limit an instance's retryable events come here at once, and
# a long outage of a busy destination (1,000 events a second in packs of 25 fill 100,000 in
# 42 minutes) should be kept for replay. DEAD has no consumer: nothing is held per message.
DEFAULT_DEAD_MAX_PER_INSTANCE = 1_000_000
# JetStream's answer to a publish its subject's limit refuses (with discard_new_per_subject).
_STORE_FAILED = 10077

# Message headers. W3C trace context travels in the lowercase names OpenTelemetry propagates.
MSG_ID = "Nats-Msg-Id"
"""JetStream dedupe id: instance + digest of the pack's messageIds (+ attempt on retries)."""
TRACEPARENT = "traceparent"
"""W3C trace context parent header."""
TRACESTATE = "tracestate"
"""W3C trace context state header."""
REVISION = "Eventfn-Revision"
"""Registry config revision the router routed this pack with."""
TRACE_LINKS = "Eventfn-Trace-Links"
"""JSON list of traceparents of other requests whose events a merged pack carries."""
MESSAGE_IDS = "Eventfn-Message-Ids"
"""JSON list of (at most 16 of) the pack's messageIds, for trace attributes."""
COUNT = "Eventfn-Count"
"""How many events the pack holds (its JSON array's length); the runtime checks results by it."""
ATTEMPT = "Eventfn-Attempt"
"""Delivery attempt number of the events in this message, 1 for the first attempt."""
FIRST_ATTEMPT_AT = "Eventfn-First-Attempt-At"
"""Time of the first attempt, RFC 3339 UTC; the retry window counts from it."""
LAST_ERROR = "Eventfn-Last-Error"
"""The error of the last attempt (RETRY and DEAD messages)."""
HISTORY = "Eventfn-History"
"""JSON list of earlier attempts: {attempt, time, error}; carried RETRY → EVENTS → RETRY."""
LAST_LOGS = "Eventfn-Last-Logs"
"""JSON string: console output of the last attempt, secrets redacted, capped."""
LAST_REQUESTS = "Eventfn-Last-Requests"
"""JSON list: outgoing requests of the last attempt (method, url, status, error), capped."""
LAST_STACK = "Eventfn-Last-Stack"
"""JSON string: the JavaScript stack of the last attempt's error (secrets redacted), capped."""
DEAD_REASON = "Eventfn-Dead-Reason"
"""Why a message was dead-lettered (failed, retry window passed, malformed)."""
DEAD_AT = "Eventfn-Dead-At"
"""On letters re-stored after some of their pack were replayed: when they first went to DEAD."""
REPLAY_OF = "Eventfn-Replay-Of"
"""On a replayed pack: the dead letter it came from."""
VERSION = "Eventfn-Version"
"""On a replayed pack: run this version of the instance's function, not the deployed one."""

SubjectKind = Literal["events", "retry", "dead"]
_KIND_BY_NAME: dict[str, SubjectKind] = {"events": "events", "retry": "retry", "dead": "dead"}
_FORBIDDEN = frozenset(".*>")


class InvalidSubjectTokenError(ValueError):
    """An id cannot be one token of a NATS subject."""

    def __init__(self, what: str, value: str) -> None:
        self.what = what
        self.value = value
        super().__init__(
            f"{what} {value!r} cannot be used in a NATS subject: it must be non-empty and "
            "contain no whitespace, '.', '*' or '>'"
        )


class StreamTopologyError(Exception):
    """An existing stream cannot be brought to the required configuration."""


class JetStreamUnavailableError(Exception):
    """JetStream did not answer a starting service within JETSTREAM_WAIT_SECONDS."""


@dataclass(frozen=True)
class Subject:
    """A parsed eventfn subject: kind, workspace id and instance id."""

    kind: SubjectKind
    workspace_id: str
    instance_id: str


def is_token(value: str) -> bool:
    """Tell whether a value can be one token of a NATS subject."""
    return bool(value) and not any(c in _FORBIDDEN or c.isspace() for c in value)


def _token(what: str, value: str) -> str:
    """Return value if it is a valid single subject token, else raise."""
    if not is_token(value):
        raise InvalidSubjectTokenError(what, value)
    return value


def subject(kind: SubjectKind, workspace_id: str, instance_id: str) -> str:
    """Build the subject of kind for one instance of a workspace."""
    return f"{kind}.{_token('workspace id', workspace_id)}.{_token('instance id', instance_id)}"


def events_subject(workspace_id: str, instance_id: str) -> str:
    """Build the EVENTS subject of an instance."""
    return subject("events", workspace_id, instance_id)


def retry_subject(workspace_id: str, instance_id: str) -> str:
    """Build the RETRY subject of an instance."""
    return subject("retry", workspace_id, instance_id)


def dead_subject(workspace_id: str, instance_id: str) -> str:
    """Build the DEAD subject of an instance."""
    return subject("dead", workspace_id, instance_id)


def subject_filter(
    kind: SubjectKind, workspace_id: str | None = None, instance_id: str | None = None
) -> str:
    """Build a consumer filter: all of kind, one workspace, or one instance."""
    if workspace_id is None:
        if instance_id is not None:
            return f"{kind}.*.{_token('instance id', instance_id)}"
        return f"{kind}.>"
    workspace = _token("workspace id", workspace_id)
    return (
        f"{kind}.{workspace}.{'*' if instance_id is None else _token('instance id', instance_id)}"
    )


def parse_subject(value: str) -> Subject:
    """Split an eventfn subject into kind, workspace id and instance id."""
    parts = value.split(".")
    kind = _KIND_BY_NAME.get(parts[0])
    if len(parts) != 3 or kind is None:
        raise ValueError(f"{value!r} is not an eventfn subject (<kind>.<workspace>.<instance>)")
    return Subject(kind, _token("workspace id", parts[1]), _token("instance id", parts[2]))


def stream_configs(
    *,
    replicas: int = 1,
    events_max_age: timedelta = DEFAULT_EVENTS_MAX_AGE,
    retry_max_age: timedelta = DEFAULT_RETRY_MAX_AGE,
    dead_max_age: timedelta = DEFAULT_DEAD_MAX_AGE,
    retry_max_per_instance: int = DEFAULT_RETRY_MAX_PER_INSTANCE,
    dead_max_per_instance: int = DEFAULT_DEAD_MAX_PER_INSTANCE,
) -> list[StreamConfig]:
    """Return the desired configuration of EVENTS, RETRY and DEAD."""
    for what, variable, value in (
        ("retries held", "EVENTFN_RETRY_MAX_PER_INSTANCE", retry_max_per_instance),
        ("packs of dead letters kept", "EVENTFN_DEAD_MAX_PER_INSTANCE", dead_max_per_instance),
    ):
        if value < 1:
            raise ValueError(f"{what} per instance ({variable}) must be at least 1, not {value}")
    if replicas not in (1, 3, 5):
        # JetStream allows 1..5, but only odd sizes keep a quorum through a node loss.
        raise ValueError(f"stream replicas must be 1, 3 or 5, not {replicas}")

    def config(name: str, kind: SubjectKind, max_age: timedelta, **extra: object) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=[f"{kind}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            num_replicas=replicas,
            max_age=max_age.total_seconds(),
            **extra,  # type: ignore[arg-type]
        )

    return [
        config(
            EVENTS_STREAM,
            "events",
            events_max_age,
            duplicate_window=DEDUPE_WINDOW.total_seconds(),
            description="Packs of routed events, one message per (request, instance).",
        ),
        config(
            RETRY_STREAM,
            "retry",
            retry_max_age,
            duplicate_window=SERVER_DEDUPE_WINDOW.total_seconds(),
            # The subject is the instance: past this many held retries the executor
            # dead-letters its retryable events instead (see `subject_full`).
            max_msgs_per_subject=retry_max_per_instance,
            discard_new_per_subject=True,
            description="Retryable events waiting for their next attempt.",
        ),
        config(
            DEAD_STREAM,
            "dead",
            dead_max_age,
            duplicate_window=SERVER_DEDUPE_WINDOW.total_seconds(),
            allow_direct=True,
            # Past this many packs of an instance, its new dead letters are refused (see
            # `subject_full`) and discarded with the reason, never its stored ones.
            max_msgs_per_subject=dead_max_per_instance,
            discard_new_per_subject=True,
            description="Events past the retry window, for listing and replay.",
        ),
    ]


_MANAGED = (
    "subjects",
    "retention",
    "storage",
    "discard",
    "num_replicas",
    "max_age",
    "duplicate_window",
    "allow_direct",
    "max_msgs_per_subject",
    "discard_new_per_subject",
    "description",
)


def config_drift(current: StreamConfig, desired: StreamConfig) -> list[str]:
    """Return the names of managed fields where current differs from desired."""
    drift = []
    for name in _MANAGED:
        want, have = getattr(desired, name), getattr(current, name)
        if want is None:
            continue
        if isinstance(want, float) and isinstance(have, int | float):
            # Durations make a round trip through nanoseconds.
            if math.isclose(want, have, abs_tol=1e-6):
                continue
        elif want == have:
            continue
        drift.append(name)
    return drift


def connection_of(js: JetStreamContext) -> NatsClient:
    """Return a JetStream context's connection (for the API requests nats-py does not make)."""
    # nats-py offers no such accessor but this attribute.
    return js._nc


async def subject_counts(js: JetStreamContext, stream: str, subjects: str) -> dict[str, int]:
    """Return how many messages `stream` holds on each subject matching `subjects` (read
    page after page: the server answers at most 100,000 subjects at a time)."""
    counts: dict[str, int] = {}
    while True:
        reply = await connection_of(js).request(
            f"$JS.API.STREAM.INFO.{stream}",
            orjson.dumps({"subjects_filter": subjects, "offset": len(counts)}),
            timeout=10,
        )
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        page = (answer.get("state") or {}).get("subjects") or {}
        counts.update(page)
        if not page or len(counts) >= answer.get("total", 0):
            return counts


async def _keeping_stored(
    js: JetStreamContext, info: StreamInfo, desired: StreamConfig
) -> StreamConfig:
    """Return `desired` with a per-subject limit that drops nothing stored.

    A per-subject limit added or lowered makes the server drop, at once, the oldest messages
    of every subject over it: an earlier version's RETRY or DEAD, or a lowered setting, would
    lose held retries or dead letters. While a subject holds more than the limit less a tenth
    (room for what arrives during the update), the limit goes no lower than that subject's
    count plus the wanted limit; a later start lowers it once the subject has drained.
    """
    want, have = desired.max_msgs_per_subject, info.config.max_msgs_per_subject
    unlimited = have is None or have <= 0
    if want is None or want <= 0 or (not unlimited and want >= have):
        return desired  # raising (or keeping) a limit drops nothing
    room = want // 10
    if info.state.messages + room <= want:
        return desired  # no subject can be near it
    assert desired.name is not None and desired.subjects
    most = max((await subject_counts(js, desired.name, desired.subjects[0])).values(), default=0)
    if most + room <= want:
        return desired
    kept = most + want if unlimited else min(have, most + want)
    log.warning(
        "stream %s: a subject holds %d messages, more than the limit of %d per subject "
        "(less a tenth); the limit is %d until it drains, so nothing stored is dropped",
        desired.name,
        most,
        want,
        kept,
    )
    return desired.evolve(max_msgs_per_subject=kept)


def subject_full(error: BaseException) -> bool:
    """Tell whether a publish was refused because its subject holds as many messages as its
    stream allows per subject (an instance's held retries, or its packs of dead letters)."""
    return (
        isinstance(error, APIError)
        and error.err_code == _STORE_FAILED
        and "per subject" in (error.description or "")
    )


CREATE_ATTEMPTS = 3

# A server that stops answering (its host cut off, not closed) is only noticed by pings: with
# the client's default (every 2 minutes, 2 unanswered) a service would publish into a dead
# connection for minutes. Every 2 s, 2 unanswered: another server of the cluster takes over
# within about 6 s (tests/netns measures it).
PING_INTERVAL_SECONDS = 2
MAX_OUTSTANDING_PINGS = 2
# Pings alone are not enough: once the socket's send buffer is full (a busy publisher, a
# server that acknowledges nothing), nats-py's ping waits behind the blocked flush forever
# and the connection is never declared stale. The kernel then ends a connection whose sent
# bytes stay unacknowledged this long, the flush fails and the client reconnects.
UNACKNOWLEDGED_WRITE_SECONDS = 5
# How long a starting service waits for JetStream's API to answer (a new cluster answers once
# it has elected a meta leader) before it gives up.
JETSTREAM_WAIT_SECONDS = 60.0


async def _create(js: JetStreamContext, desired: StreamConfig) -> None:
    """Create a stream, asking again when a cluster is slow to place it (idempotent)."""
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            await js.add_stream(desired)
            return
        except NatsTimeoutError:
            # Placement of a replicated stream can stall while peers catch up; a repeated
            # identical create is harmless.
            if attempt == CREATE_ATTEMPTS:
                raise


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    events_max_age: timedelta = DEFAULT_EVENTS_MAX_AGE,
    retry_max_age: timedelta = DEFAULT_RETRY_MAX_AGE,
    dead_max_age: timedelta = DEFAULT_DEAD_MAX_AGE,
    retry_max_per_instance: int = DEFAULT_RETRY_MAX_PER_INSTANCE,
    dead_max_per_instance: int = DEFAULT_DEAD_MAX_PER_INSTANCE,
) -> None:
    """Create EVENTS, RETRY and DEAD, or update them to the desired config (idempotent)."""
    desired_configs = stream_configs(
        replicas=replicas,
        events_max_age=events_max_age,
        retry_max_age=retry_max_age,
        dead_max_age=dead_max_age,
        retry_max_per_instance=retry_max_per_instance,
        dead_max_per_instance=dead_max_per_instance,
    )
    for desired in desired_configs:
        assert desired.name is not None
        try:
            info = await js.stream_info(desired.name)
        except NotFoundError:
            # Two services racing here is fine: an identical create succeeds on the server.
            await _create(js, desired)
            continue
        desired = await _keeping_stored(js, info, desired)
        drift = config_drift(info.config, desired)
        if not drift:
            continue
        try:
            await js.update_stream(info.config.evolve(**{k: getattr(desired, k) for k in drift}))
        except nats.errors.Error as exc:
            raise StreamTopologyError(
                f"stream {desired.name} differs in {', '.join(drift)} and cannot be updated: "
                f"{exc}; change it by hand (nats stream edit) or recreate it"
            ) from exc


async def _ensure_when_answered(js: JetStreamContext, settings: CommonSettings) -> None:
    """Ensure the streams once JetStream answers: a cluster that has just started (or lost
    its meta leader) answers its API only once it has elected one, and a service started
    meanwhile waits for it, up to JETSTREAM_WAIT_SECONDS, rather than exit."""
    deadline = time.monotonic() + JETSTREAM_WAIT_SECONDS
    delay = 0.5
    while True:
        try:
            await ensure_streams(
                js,
                replicas=settings.stream_replicas,
                dead_max_age=timedelta(days=settings.dead_retention_days),
                retry_max_per_instance=settings.retry_max_per_instance,
                dead_max_per_instance=settings.dead_max_per_instance,
            )
            return
        except (NatsTimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError) as exc:
            if time.monotonic() + delay >= deadline:
                raise JetStreamUnavailableError(
                    f"JetStream did not answer for {JETSTREAM_WAIT_SECONDS:.0f} s ({exc!r}): is "
                    "the NATS server running with JetStream enabled, and has its cluster a "
                    "leader?"
                ) from exc
            log.warning(
                "JetStream did not answer (%r; a cluster may be electing its leader); "
                "trying again in %.1f s",
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def bound_unacknowledged_writes(nc: NatsClient) -> bool:
    """Set TCP_USER_TIMEOUT on the client's current socket; tell whether it could be set.

    nats-py offers no socket options, so this reaches its transport's stream writer; the
    streams tests check that the option really lands on a live connection.
    """
    transport = getattr(nc, "_transport", None)
    writer = getattr(transport, "_io_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, option, UNACKNOWLEDGED_WRITE_SECONDS * 1000)
    return True


async def open_streams(
    settings: CommonSettings,
    nats_url: str,
    *,
    name: str,
    max_pending_publishes: int | None = None,
) -> tuple[NatsClient, JetStreamContext]:
    """Connect a data-plane service to NATS (reconnecting forever) and ensure the streams.

    `nats_url` may list a cluster's servers separated by commas. Every service ensures the
    streams with the same settings, so whichever starts first creates them.
    """
    box: list[NatsClient] = []

    async def reconnected() -> None:
        bound_unacknowledged_writes(box[0])

    nc = await nats.connect(
        nats_servers(nats_url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=PING_INTERVAL_SECONDS,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        reconnected_cb=reconnected,
    )
    box.append(nc)
    bound_unacknowledged_writes(nc)
    js = (
        nc.jetstream(publish_async_max_pending=max_pending_publishes)
        if max_pending_publishes
        else nc.jetstream()
    )
    try:
        await _ensure_when_answered(js, settings)
    except BaseException:
        await nc.close()
        raise
    return nc, js
