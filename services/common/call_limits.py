"""What a gRPC server holds for clients that send nothing: connections without HTTP/2 or
without a call (grpc core's own limits), and calls waiting for a client's message (idle
time, and how many may wait at once). The gate in `rpc.py` applies them to each call."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.errors import EventfnError, InvalidArgument, Unavailable


@dataclass(frozen=True)
class ServerLimits:
    """What a server holds for clients that send nothing.

    Connections: one without a call is closed after `connection_idle_seconds` (GOAWAY: a
    client reconnects at its next call), one that has not sent HTTP/2's preface after
    `handshake_seconds`. Calls, when `call_idle_seconds` is set: a call waits for a client's
    message from its start until its request came (one streaming requests: between any two)
    and is ended once it waited `call_idle_seconds`; past `max_waiting_calls` waiting at once,
    each new call ends the one that waited longest, among calls of clients no servicer
    vouched for first (`vouch`). A call streaming only responses (WatchConfig) stops waiting
    once its request came, however long it then stays open — unless its handler writes by
    itself for as long as it likes (Health.Watch): that keeps counting, and idles out.

    Messages: a request message over `max_message_bytes` (after decompression: grpc core
    stops inflating there) is refused with RESOURCE_EXHAUSTED before any of our code runs.
    """

    connection_idle_seconds: float = 300.0
    handshake_seconds: float = 10.0
    call_idle_seconds: float | None = None
    max_waiting_calls: int = 2000
    max_message_bytes: int = 16 * 1024 * 1024

    def options(self) -> list[tuple[str, int]]:
        """Return the grpc core channel arguments of the limits."""
        return [
            ("grpc.max_connection_idle_ms", round(self.connection_idle_seconds * 1000)),
            ("grpc.server_handshake_timeout_ms", round(self.handshake_seconds * 1000)),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]


class WaitingCall:
    """A call waiting for a client's message: its task, since when, whether its client is
    known, and why it was ended."""

    __slots__ = ("ended", "known", "owner", "since", "task")

    def __init__(self, owner: WaitingCalls, task: asyncio.Task[Any], since: float) -> None:
        self.owner = owner
        self.task = task
        self.since = since
        self.known = False
        self.ended: EventfnError | None = None

    def came(self, *, more: bool) -> None:
        """Note a message of the client's: the call waits again (for its next) when `more`."""
        self.owner.came(self, more=more)


class WaitingCalls:
    """The calls of one server waiting for a client's message, each kind longest-waiting
    first; ends a call that waited too long, or one to make room for a new call: the
    longest-waiting of those whose client is not known (see `vouch`), else of the others.

    Ending a call cancels its task, which the gate turns into the call's UNAVAILABLE status.
    One timer serves every call: the first to expire is always the head of one of two queues.
    """

    def __init__(self, idle_seconds: float, max_calls: int) -> None:
        self._idle = idle_seconds
        self._max = max_calls
        self._unknown: OrderedDict[WaitingCall, None] = OrderedDict()
        self._known: OrderedDict[WaitingCall, None] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> WaitingCall:
        """Count the current task's call as waiting, from now until its task ends or it stops
        (and as the call `vouch` names)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        call = WaitingCall(self, task, loop.time())
        if len(self._unknown) + len(self._known) >= self._max:
            oldest = next(iter(self._unknown or self._known))
            self._end(oldest, self._crowded(call.since - oldest.since))
        self._unknown[call] = None
        task.add_done_callback(lambda _: self._queue(call).pop(call, None))
        if self._timer is None:
            self._timer = loop.call_at(call.since + self._idle, self._expire)
        _CALL.set(call)  # in the call's task: its servicer's tasks see it too
        return call

    def came(self, call: WaitingCall, *, more: bool) -> None:
        """Note a message of the call's client: it waits again (for its next) when `more`."""
        queue = self._queue(call)
        if call not in queue:  # ended, or no longer waiting
            return
        if more:
            call.since = asyncio.get_running_loop().time()
            queue.move_to_end(call)
        else:
            del queue[call]

    def vouch(self, call: WaitingCall) -> None:
        """Count the call's client as known: calls of unknown clients make room first."""
        if call in self._unknown:
            del self._unknown[call]
            call.known = True
            call.since = asyncio.get_running_loop().time()  # vouched for a message just come
            self._known[call] = None

    def _queue(self, call: WaitingCall) -> OrderedDict[WaitingCall, None]:
        return self._known if call.known else self._unknown

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        while heads := [next(iter(queue)) for queue in (self._unknown, self._known) if queue]:
            oldest = min(heads, key=lambda call: call.since)
            if oldest.since + self._idle > loop.time():
                self._timer = loop.call_at(oldest.since + self._idle, self._expire)
                return
            self._end(oldest, self._idled())

    def _end(self, call: WaitingCall, error: EventfnError) -> None:
        del self._queue(call)[call]
        call.ended = error
        call.task.cancel()

    def _idled(self) -> Unavailable:
        error = Unavailable(
            f"the server ends a call that waits {self._idle:g} s for the client's next "
            "message: open a new call (stream) when there is more to send, and send again "
            "what this one did not answer"
        )
        error.metadata = {"idle_seconds": f"{self._idle:g}"}
        return error

    def _crowded(self, waited: float) -> Unavailable:
        error = Unavailable(
            f"the server holds at most {self._max} calls waiting for a client's message and "
            f"ended this one, which had waited longest ({waited:.1f} s; calls of clients "
            "whose credentials were not checked go first): open a new call (stream) when "
            "there is more to send, and send again what this one did not answer"
        )
        error.metadata = {"max_waiting_calls": str(self._max)}
        return error


# The current RPC's waiting call (given limits), for `vouch`.
_CALL: ContextVar[WaitingCall | None] = ContextVar("eventfn_waiting_call", default=None)


def vouch() -> None:
    """Count the current call's client as known (a servicer checked its credentials): past
    the server's limit of waiting calls, those of unknown clients are ended first."""
    call = _CALL.get()
    if call is not None:
        call.owner.vouch(call)


async def read_request(
    context: grpc.aio.ServicerContext, call: WaitingCall, *, still_waits: bool = False
) -> Any:
    """Read a unary call's one request (the gate reads it, so that waiting for it is bounded).

    `still_waits`: the call keeps counting as waiting once its request came (a handler that
    writes by itself for as long as it likes, such as Health.Watch, holds the call for its
    client alone: it idles out like a stream that sends nothing).
    """
    request = await context.read()
    if request is grpc.aio.EOF:  # pyright: ignore[reportAttributeAccessIssue]
        raise InvalidArgument("the call ended before its request came: send one request message")
    call.came(more=still_waits)
    return request


def ended_by_limits(call: WaitingCall | None, error: BaseException) -> EventfnError | None:
    """Return the error the server's limits ended a call with (cancelling its task), taking
    that cancellation back; None for any other cancellation or abort."""
    if call is None or call.ended is None or not isinstance(error, asyncio.CancelledError):
        return None
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return call.ended
