"""A runtime worker process: holds function contexts, runs invocations, performs their fetches.

Started by the pool as `python -m services.runtime.worker STATUS_FILE`; frames arrive
on stdin and replies leave on the original stdout (fd 1 is pointed at stderr so nothing else
can corrupt the framing). The pool may kill this process at any moment: nothing here needs a
clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import orjson

from .config import EgressConfig
from .engine import FunctionContext
from .http_fetch import HostFetcher
from .protocol import (
    LOADING,
    PREFIX_SIZE,
    STATUS_SIZE,
    encode_frame,
    frame_sizes,
    read_status,
    write_crossing,
    write_last_read,
    write_progress,
)
from .redact import compile_secrets, redact


class Worker:
    """Serves frames from the pool."""

    def __init__(self, status: mmap.mmap, out: asyncio.WriteTransport) -> None:
        self._status = status
        self._out = out
        self._contexts: OrderedDict[str, FunctionContext] = OrderedDict()
        self._max_contexts = 64
        self._fetcher = HostFetcher(EgressConfig())
        self._tasks: set[asyncio.Task[None]] = set()
        self._current = 0  # the invocation inside V8 now

    def _progress(self, index: int) -> None:
        write_progress(self._status, self._current, index)

    @contextlib.contextmanager
    def _crossing(self, seq: int) -> Iterator[None]:
        # The pool's watchdog reads this to kill a worker stuck in V8 past a deadline.
        self._current = seq
        write_crossing(self._status, seq, time.monotonic_ns())
        try:
            yield
        finally:
            write_crossing(self._status, 0, 0)

    def _reply(self, header: dict[str, Any]) -> None:
        self._out.write(encode_frame(header))

    def _context(self, seq: int, key: str, code: str) -> FunctionContext:
        ctx = self._contexts.get(key)
        if ctx is None:
            with self._crossing(seq):
                write_progress(self._status, seq, LOADING)
                ctx = FunctionContext(code, self._progress)
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
            egress = header["egress"]
            self._fetcher = HostFetcher(
                EgressConfig(
                    **{
                        **egress,
                        "allow": tuple(egress["allow"]),
                        "no_proxy": tuple(egress["no_proxy"]),
                    }
                )
            )
            self._max_contexts = int(header["max_contexts"])
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
            ctx = self._context(seq, header["key"], header["code"])
            self._reply({"id": seq, "h": sorted(ctx.handlers())})
            return
        task = asyncio.get_running_loop().create_task(self._run(seq, header, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, seq: int, header: dict[str, Any], payload: bytes) -> None:
        try:
            reply = await self._invoke(seq, header, payload)
        except Exception as exc:  # a bug here must not leave the pool waiting forever
            reply = {"id": seq, "internal": f"{type(exc).__name__}: {exc}"}
        self._reply(reply)

    async def _invoke(self, seq: int, header: dict[str, Any], payload: bytes) -> dict[str, Any]:
        key = header["key"]
        ctx = self._context(seq, key, header["code"])
        if header.get("fresh"):
            self._contexts.pop(key, None)  # Preview: never reused
        if ctx.load_error is not None:
            count = 1 if header["batch"] else len(orjson.loads(payload))
            return {"id": seq, "r": [ctx.load_error] * count, "l": [], "ld": 0, "q": []}
        deadline = float(header["deadline"])
        keep = bool(header.get("keep"))
        events = payload.decode("utf-8")
        traces: list[dict[str, Any]] = []
        with self._crossing(seq):
            report = orjson.loads(
                ctx.start(
                    seq, events, header["settings"], header["batch"], int(header["log_cap"]), keep
                )
            )
        while not report["d"]:
            now = time.monotonic()
            if now >= deadline:
                with self._crossing(seq):
                    report = orjson.loads(ctx.cancel(seq))
                break
            if report["f"]:
                results, round_traces, cut = await self._fetcher.perform_round(
                    report["f"], deadline, keep
                )
                traces.extend(round_traces)
                if cut:  # out of time: unfinished events end as Timeout, not FetchError
                    with self._crossing(seq):
                        report = orjson.loads(ctx.cancel(seq))
                    break
                with self._crossing(seq):
                    report = orjson.loads(ctx.resolve(seq, orjson.dumps(results).decode()))
                continue
            wait = deadline - now
            if report["t"] >= 0:
                wait = min(wait, report["t"] / 1000)
            await asyncio.sleep(wait)
            with self._crossing(seq):
                report = orjson.loads(ctx.fire_timers(seq) if report["t"] >= 0 else ctx.cancel(seq))
        report["id"] = seq
        report["q"] = traces
        report.pop("f", None)
        secrets = compile_secrets(header.get("secrets") or ())
        if secrets is not None:
            _redact_report(report, secrets)
        return report


def _redact_report(report: dict[str, Any], pattern: Any) -> None:
    report["l"] = [[lvl, redact(msg, pattern)] for lvl, msg in report["l"]]
    for r in report["r"]:
        if isinstance(r, dict):
            r["message"] = redact(str(r.get("message", "")), pattern)
            r["stack"] = redact(str(r.get("stack", "")), pattern)
    for t in report["q"]:
        for field in ("url", "error", "request_body", "response_body"):
            if t.get(field):
                t[field] = redact(t[field], pattern)
        for field in ("request_headers", "response_headers"):
            if t.get(field):
                t[field] = [[k, redact(v, pattern)] for k, v in t[field]]
    if "v" in report:
        report["v"] = orjson.loads(redact(orjson.dumps(report["v"]).decode(), pattern))
    if "b" in report:
        report["b"] = orjson.loads(redact(orjson.dumps(report["b"]).decode(), pattern))


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
    import uvloop

    uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
