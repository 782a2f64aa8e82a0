"""The pull loop of the data plane's JetStream consumers (executor: EVENTS, retrier: RETRY).

One durable pull consumer per kind, shared by every process of that kind: each process asks
for what it has room for, handles what arrives, and keeps asking through NATS reconnects.

One pull request at a time stays open on the server: it asks for as many messages as there
is room for, and the server delivers each as soon as it is stored, until the request has
delivered that many or expires; then the next request goes out. (A `fetch` per batch, as
nats-py offers, costs two requests and an answer for each — at 1,000 single events/s that
was a request per pack, most of the executor's NATS traffic.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

log = logging.getLogger(__name__)

# A pull request lives this long on the server. One left over after a stop would take (and
# strand until its ack wait) a message handed back before it expires.
FETCH_SECONDS = 1.0
# A request neither fulfilled nor ended this long after its expiry was lost (a reconnect).
LOST_REQUEST_SECONDS = 0.5
# After a request the server ended at once with nothing (a status such as a consumer being
# recreated), this long before the next: never a busy loop.
REFUSED_REQUEST_PAUSE_SECONDS = 0.1
# How soon a refused subscription is asked again (doubling up to the maximum).
SUBSCRIBE_RETRY_SECONDS = 0.5
SUBSCRIBE_RETRY_MAX_SECONDS = 5.0
# What a NATS call raises when the server is away or slow: retried, never a crash.
NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, ConnectionError, OSError)
# The settings of a consumer its processes' configuration decides (the others it keeps from
# when it was made): a durable made by an earlier version, or under other settings, is
# brought to them when a process starts.
MANAGED_SETTINGS = ("ack_wait", "max_ack_pending")


async def _update_consumer(
    js: JetStreamContext, stream: str, durable: str, config: ConsumerConfig
) -> None:
    """Give an existing durable consumer the managed settings of `config` where they differ
    (JetStream keeps its position and its pending messages); a missing one is left to be
    made with `config`."""
    try:
        info = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return
    current = info.config
    changed = {
        name: getattr(config, name)
        for name in MANAGED_SETTINGS
        if getattr(config, name) is not None and getattr(current, name) != getattr(config, name)
    }
    if not changed:
        return
    log.info(
        "consumer %s on %s: %s",
        durable,
        stream,
        ", ".join(f"{name} {getattr(current, name)} -> {value}" for name, value in changed.items()),
    )
    try:
        await js.add_consumer(stream, config=dataclasses.replace(current, **changed))
    except nats.js.errors.APIError as error:  # refused: read it as it is rather than not at all
        log.warning(
            "consumer %s on %s keeps its settings: the update was refused: %r",
            durable,
            stream,
            error,
        )


async def pull_forever(
    nc: NatsClient,
    js: JetStreamContext,
    *,
    subjects: str,
    stream: str,
    durable: str,
    config: ConsumerConfig,
    room: Callable[[], Awaitable[int]],
    handle: Callable[[list[Msg]], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    """Ask for up to `await room()` messages at a time and `handle` them as they arrive (what
    arrived together, in one call), until `stopping`."""
    delay = SUBSCRIBE_RETRY_SECONDS
    while True:
        # A process that starts while JetStream is briefly unavailable (a cluster electing
        # leaders after a partition heals) keeps asking: it would otherwise serve health
        # checks and never consume. (The subscription creates or binds the consumer.)
        try:
            await _update_consumer(js, stream, durable, config)
            made = await js.pull_subscribe(subjects, durable=durable, stream=stream, config=config)
            await made.unsubscribe()  # it made or bound the consumer; its inbox is not needed
            break
        except NATS_ERRORS as error:
            if stopping.is_set():
                return
            log.warning(
                "cannot pull from %s (%s) yet: %r; asking again in %.1f s",
                stream,
                durable,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX_SECONDS)
    arrived: asyncio.Queue[Msg] = asyncio.Queue()

    async def deliver(msg: Msg) -> None:
        arrived.put_nowait(msg)

    # Each request has its own reply subject, so a late status of an earlier one (after a
    # reconnect) cannot end the current one.
    inbox = nc.new_inbox()
    box = await nc.subscribe(f"{inbox}.*", cb=deliver)
    # The platform's JetStream has no domain or API prefix: the default API subject.
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
    sent = 0
    try:
        while not stopping.is_set():
            if not nc.is_connected:  # a request now would wait in the client's buffer
                await asyncio.sleep(0.5)
                continue
            want = await room()
            request = {"batch": want, "expires": int(FETCH_SECONDS * 1e9)}
            sent += 1
            reply = f"{inbox}.{sent}"
            try:
                await nc.publish(next_subject, orjson.dumps(request), reply=reply)
            except NATS_ERRORS as error:  # NATS reconnecting: keep trying
                log.warning("pull from %s failed: %r", stream, error)
                await asyncio.sleep(0.5)
                continue
            ended = await _receive(
                arrived, reply, want, handle, FETCH_SECONDS + LOST_REQUEST_SECONDS
            )
            if ended not in (None, "408"):  # refused at once: say why, and never busy-loop
                log.warning("pull from %s (%s) answered %s", stream, durable, ended)
                await asyncio.sleep(REFUSED_REQUEST_PAUSE_SECONDS)
    finally:
        with contextlib.suppress(*NATS_ERRORS):
            await box.unsubscribe()


async def _receive(
    arrived: asyncio.Queue[Msg],
    reply: str,
    want: int,
    handle: Callable[[list[Msg]], Awaitable[None]],
    seconds: float,
) -> str | None:
    """Handle what arrives until the request answered at `reply` delivered `want`, the
    server ended it or `seconds` passed; return the status that ended it (None: fulfilled or
    timed out). Messages of earlier requests are handled too; their statuses are not."""
    deadline = asyncio.get_running_loop().time() + seconds
    got = 0
    while got < want:
        try:
            async with asyncio.timeout_at(deadline):
                first = await arrived.get()
        except TimeoutError:
            return None
        batch = [first]
        while not arrived.empty():
            batch.append(arrived.get_nowait())
        msgs = [m for m in batch if not JetStreamContext.is_status_msg(m)]
        got += len(msgs)
        if msgs:
            await handle(msgs)
        for m in batch:
            status = JetStreamContext.is_status_msg(m)
            if status and m.subject == reply:
                return status
    return None
