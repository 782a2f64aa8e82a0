"""The pull loop of the data plane's JetStream consumers (executor: EVENTS, retrier: RETRY).

One durable pull consumer per kind, shared by every process of that kind: each process asks
for what it has room for, handles what arrives, and keeps asking through NATS reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

log = logging.getLogger(__name__)

# A pull request lives this long on the server. One left over after a stop would take (and
# strand until its ack wait) a message handed back before it expires.
FETCH_SECONDS = 1.0
# How soon a refused subscription is asked again (doubling up to the maximum).
SUBSCRIBE_RETRY_SECONDS = 0.5
SUBSCRIBE_RETRY_MAX_SECONDS = 5.0
# What a NATS call raises when the server is away or slow: retried, never a crash.
NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, ConnectionError, OSError)


async def pull_forever(
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
    """Fetch up to `await room()` messages at a time and `handle` them, until `stopping`."""
    delay = SUBSCRIBE_RETRY_SECONDS
    while True:
        # A process that starts while JetStream is briefly unavailable (a cluster electing
        # leaders after a partition heals) keeps asking: it would otherwise serve health
        # checks and never consume.
        try:
            sub = await js.pull_subscribe(subjects, durable=durable, stream=stream, config=config)
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
    while not stopping.is_set():
        want = await room()
        try:
            msgs = await sub.fetch(want, timeout=FETCH_SECONDS)
        except TimeoutError:
            continue
        except NATS_ERRORS as error:  # NATS reconnecting: keep trying
            log.warning("fetch from %s failed: %r", stream, error)
            await asyncio.sleep(0.5)
            continue
        await handle(msgs)
