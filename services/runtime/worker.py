"""A runtime worker process: holds function contexts, runs invocations, performs their fetches.

Started by the pool as `python -m services.runtime.worker STATUS_FILE`; frames arrive on
stdin and replies leave on the original stdout (fd 1 is pointed at stderr so nothing else
can corrupt the framing). The pool may kill this process at any moment: nothing here needs a
clean shutdown. Everything a context reports is checked (`report.parse_report`) before it
is acted on or sent on: user code shares the context with the runtime's JS side.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import mmap
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, cast

import orjson

from .config import EgressConfig
from .engine import FunctionContext
from .http_fetch import HostFetcher, ResponseBudget
from .model import owner_of
from .protocol import (
    LOADING,
    PREFIX_SIZE,
    STATUS_SIZE,
    UNKNOWN,
    HandlersFrame,
    InitFrame,
    RunFrame,
    RunReply,
    encode_frame,
    frame_sizes,
    mark_sent,
    read_status,
    write_created,
    write_crossing,
    write_last_read,
    write_progress,
    write_received,
)
from .redact import CUT_MARGIN, compile_secrets, cut_margin, redact_cut
from .reply_redaction import redact_reply
from .report import (
    ABSENT,
    DETAILED_TRACES,
    MAX_METHOD_CHARS,
    MAX_REJECTION,
    TRACE_TEXT_CHARS,
    FetchRequest,
    Report,
    ReportRejected,
    parse_report,
)

YOUNG_GENERATION_THRESHOLD = 50_000  # CPython's default: 700 (as the services set it)
log = logging.getLogger("eventfn.runtime.worker")


class Worker:
    """Serves frames from the pool."""

    def __init__(self, status: mmap.mmap, out: asyncio.WriteTransport) -> None:
        self._status = status
        self._out = out
        self._contexts: OrderedDict[str, FunctionContext] = OrderedDict()
        self._max_contexts = 64
        self._egress = EgressConfig()
        self._fetcher = HostFetcher(self._egress)
        self._tasks: set[asyncio.Task[None]] = set()
        self._current = 0  # the invocation inside V8 now
        self._created = 0  # contexts created (their memory is never given back)
        self._received = 0  # response bytes received for fetches, in all

    @contextlib.contextmanager
    def _crossing(self, seq: int) -> Iterator[None]:
        # The pool's watchdog reads this to kill a worker stuck in V8 past a deadline.
        self._current = seq
        write_crossing(self._status, seq, time.monotonic_ns())
        try:
            yield
        finally:
            write_crossing(self._status, 0, 0)

    def _note_received(self, size: int) -> None:
        # The pool's watchdog reads this: growth about it may be the host's, for bodies.
        self._received += size
        write_received(self._status, self._received)

    def _reply(self, header: Any) -> None:
        self._out.write(encode_frame(header))

    def _context(self, seq: int, key: str, code: str) -> FunctionContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            with self._crossing(seq):
                write_progress(self._status, seq, LOADING)
                ctx = FunctionContext(code)
            self._created += 1
            write_created(self._status, self._created)
            self._contexts[key] = ctx
            while len(self._contexts) > self._max_contexts:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return ctx

    def handle(self, header: dict[str, Any], payload: bytes) -> None:
        """Dispatch one frame."""
        op = header["op"]
        if op == "init":
            init = cast(InitFrame, header)
            egress = init["egress"]
            self._egress = EgressConfig(
                **{**egress, "allow": tuple(egress["allow"]), "no_proxy": tuple(egress["no_proxy"])}
            )
            self._fetcher = HostFetcher(self._egress)
            self._max_contexts = init["max_contexts"]
            return
        if op == "evict":
            self._contexts.pop(header["key"], None)
            return
        seq = int(header["id"])
        write_last_read(self._status, seq)
        if seq <= read_status(self._status)[3]:
            self._reply({"id": seq, "dropped": 1})  # the pool moved it to another worker
            return
        if op == "handlers":
            frame = cast(HandlersFrame, header)
            ctx = self._context(seq, frame["key"], frame["code"])
            try:
                names = sorted(ctx.handlers())
            except ReportRejected:
                self._contexts.pop(frame["key"], None)
                names = []
            self._reply({"id": seq, "handlers": names})
            return
        task = asyncio.get_running_loop().create_task(self._run(cast(RunFrame, header), payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, frame: RunFrame, payload: bytes) -> None:
        seq = frame["id"]
        try:
            reply = await self._invoke(frame, payload)
        except ReportRejected as exc:
            self._contexts.pop(frame["key"], None)  # user code broke it: never reuse it
            # The text may quote the function's own error, and so its settings.
            text, secrets = str(exc), frame["secrets"]
            margin = cut_margin(secrets)
            rejected = redact_cut(text, MAX_REJECTION, compile_secrets(secrets), margin=margin)
            reply = _failed(seq, rejected=rejected)
        except Exception:  # a bug here must not leave the pool waiting forever
            log.exception("invocation %d of %s failed inside the worker", seq, frame["key"])
            reply = _failed(seq, internal="the runtime worker failed; see the executor's log")
        try:
            data = encode_frame(reply)
        except TypeError as exc:  # orjson's: what no checked report should hold; answer still
            log.error("reply to invocation %d of %s cannot be encoded: %s", seq, frame["key"], exc)
            data = encode_frame(
                _failed(seq, internal="the runtime worker failed; see the executor's log")
            )
        self._out.write(data)

    def _start(self, ctx: FunctionContext, frame: RunFrame, events: str, local: int) -> str:
        """Start an invocation: all handlers in one crossing, or (careful) one per crossing.

        Careful runs record which event's handler is starting, so a handler that never
        returns is named when its worker is killed; the pool asks for them only to find the
        offender of an invocation that got a worker killed.
        """
        seq = frame["id"]
        args = (local, events, frame["settings"], frame["batch"], frame["log_cap"], frame["keep"])
        if not frame["careful"]:
            write_progress(self._status, seq, UNKNOWN)
            with self._crossing(seq):
                return ctx.start(*args)
        with self._crossing(seq):
            count = ctx.prepare(*args)
        for index in range(count):
            write_progress(self._status, seq, index)
            with self._crossing(seq):
                ctx.run_event(local, index)
        write_progress(self._status, seq, UNKNOWN)
        with self._crossing(seq):
            return ctx.poll(local)

    def _report(self, text: Any, frame: RunFrame, sent: int = 0) -> Report:
        return parse_report(
            text,
            expected=1 if frame["batch"] else frame["count"],
            keep_values=frame["keep"],
            log_cap=frame["log_cap"],
            max_request_bytes=self._egress.max_request_bytes,
            fetches_so_far=sent,
        )

    async def _invoke(self, frame: RunFrame, payload: bytes) -> RunReply:
        seq, key = frame["id"], frame["key"]
        ctx = self._context(seq, key, frame["code"])
        if frame["fresh"]:
            self._contexts.pop(key, None)  # Preview: never reused
        if ctx.load_error is not None:
            count = 1 if frame["batch"] else frame["count"]
            return {
                "id": seq,
                "results": [ctx.load_error] * count,
                "logs": [],
                "logs_dropped": 0,
                "requests": [],
            }
        deadline, keep = frame["deadline"], frame["keep"]
        traces: list[dict[str, Any]] = []
        briefed = 0  # traces[:briefed] keep no bodies or headers
        sent = 0
        local = ctx.open_invocation()
        try:
            raw = self._start(ctx, frame, payload.decode("utf-8"), local)
            report = self._report(raw, frame)
            while not report.done:
                now = time.monotonic()
                if now >= deadline:
                    with self._crossing(seq):
                        report = self._report(ctx.cancel(local), frame, sent)
                    break
                if report.fetches:
                    ready = [r for r in report.fetches if r.problem is None]
                    if ready:
                        mark_sent(self._status, frame["slot"])
                    sent += len(report.fetches)
                    results, round_traces, cut = await self._fetcher.perform_round(
                        ready,
                        deadline,
                        keep,
                        ResponseBudget(frame["memory_limit"], self._note_received),
                        owner=owner_of(key),
                        tenant=frame["tenant"],
                        trace_headers=[(k, v) for k, v in frame["trace_headers"]],
                    )
                    refused = [r for r in report.fetches if r.problem is not None]
                    results += [_refused(r.id, r.problem) for r in refused]
                    traces += map(_capped, round_traces)
                    traces += [_capped(_refusal_trace(r)) for r in refused]
                    for t in traces[briefed : len(traces) - DETAILED_TRACES]:
                        _brief(t)
                    briefed = max(briefed, len(traces) - DETAILED_TRACES)
                    if cut:  # out of time: unfinished events end as Timeout, not FetchError
                        with self._crossing(seq):
                            report = self._report(ctx.cancel(local), frame, sent)
                        break
                    with self._crossing(seq):
                        raw = ctx.resolve(local, orjson.dumps(results).decode())
                    report = self._report(raw, frame, sent)
                    continue
                wait = deadline - now
                if report.timer_ms >= 0:
                    wait = min(wait, report.timer_ms / 1000)
                await asyncio.sleep(wait)
                with self._crossing(seq):
                    raw = ctx.fire_timers(local) if report.timer_ms >= 0 else ctx.cancel(local)
                report = self._report(raw, frame, sent)
        finally:
            ctx.close_invocation(local)
        reply: RunReply = {
            "id": seq,
            "results": report.results,
            "logs": [[level, line] for level, line in report.logs],
            "logs_dropped": report.logs_dropped,
            "requests": traces,
        }
        if report.values is not None:
            reply["values"] = report.values
        if report.batch_value is not ABSENT:
            reply["batch_value"] = report.batch_value
        if frame["secrets"]:
            # Off the event loop: building a long secret's pattern takes a second or more, and
            # redacting up to its budget; the worker's other invocations go on meanwhile.
            await asyncio.to_thread(_redact, reply, frame, report.last_log_cut)
        else:
            _redact(reply, frame, report.last_log_cut)
        return reply


def _redact(reply: RunReply, frame: RunFrame, last_log_cut: bool) -> None:
    secrets = frame["secrets"]
    redact_reply(
        reply,
        compile_secrets(secrets),
        frame["log_cap"],
        last_log_cut,
        margin=cut_margin(secrets),
    )


def _refusal_trace(r: FetchRequest) -> dict[str, Any]:
    # A refused URL or method may be of any length: CUT_MARGIN past its cap, it is cut once
    # redacted (the URL by `_capped`).
    return {
        "method": r.method[: MAX_METHOD_CHARS + CUT_MARGIN],
        "url": r.url,
        "status": None,
        "error": r.problem,
        "duration_ms": 0,
    }


def _capped(trace: dict[str, Any]) -> dict[str, Any]:
    """Cut a trace's URL, CUT_MARGIN past its cap (cut again once redacted), where its error
    quotes it too, and the error to what that leaves room for."""
    url = trace["url"]
    cut = trace["url"] = url[: TRACE_TEXT_CHARS + CUT_MARGIN]
    error = trace.get("error")
    if error:
        if cut != url:
            error = error.replace(url, cut)
        trace["error"] = error[: 2 * (TRACE_TEXT_CHARS + CUT_MARGIN)]
    return trace


def _brief(trace: dict[str, Any]) -> None:
    """Drop a trace's bodies and headers (those of all but the last DETAILED_TRACES)."""
    for name in ("request_body", "response_body", "request_headers", "response_headers"):
        trace.pop(name, None)


def _refused(request_id: int, problem: str | None) -> dict[str, Any]:
    return {"id": request_id, "error": {"message": problem, "type": "system", "code": "EINVAL"}}


def _failed(seq: int, **why: str) -> RunReply:
    reply: RunReply = {"id": seq, "results": [], "logs": [], "logs_dropped": 0, "requests": []}
    reply.update(why)  # type: ignore[typeddict-item]
    return reply


def _map_status(path: str) -> mmap.mmap:
    with open(path, "r+b") as fh:
        return mmap.mmap(fh.fileno(), STATUS_SIZE)


async def serve(status_path: str) -> None:
    """Read frames from stdin until it closes."""
    frames_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the frame stream
    status = _map_status(status_path)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    out, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(frames_fd, "wb", buffering=0)
    )
    worker = Worker(status, out)  # type: ignore[arg-type]
    # Freeze what start-up built and collect the young generation rarely: an invocation's
    # garbage (frames, reports, fetch objects) is freed by reference counting, and a
    # collection every 700 allocations only walked it again. (No collection first: a
    # traversal of what V8's start-up left is not worth a risk to save a few kB.)
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])
    worker._reply({"ready": 1})
    while True:
        try:
            prefix = await reader.readexactly(PREFIX_SIZE)
        except asyncio.IncompleteReadError:
            return
        head_len, payload_len = frame_sizes(prefix)
        header = orjson.loads(await reader.readexactly(head_len))
        payload = await reader.readexactly(payload_len) if payload_len else b""
        worker.handle(header, payload)


def main() -> None:
    """Run a worker (entry point of the worker process)."""
    import faulthandler

    import uvloop

    faulthandler.enable()  # a crash inside V8 leaves the Python stack in the executor's log
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
