"""The whole platform as `eventfn up` runs it (one process per service, embedded PostgreSQL
and NATS) for benchmarks: started on free ports in a temp state dir, its processes' CPU read
from /proc, and a local sink that records when each event arrived."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil
from aiohttp import web

from bench.common import serve_posts, wait_changed
from services.cli.up import Platform

TICK = os.sysconf("SC_CLK_TCK")


def _free() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def platform(**settings: str) -> Iterator[tuple[Platform, dict[str, str]]]:
    """Start the platform in a temp state dir, on free ports (`settings`: more EVENTFN_*
    variables); stop it and remove the dir (its database and event store: tens of MB a run)
    afterwards."""
    env = {
        **settings,
        "EVENTFN_REGISTRY_LISTEN": _free(),
        "EVENTFN_ROUTER_LISTEN": _free(),
        "EVENTFN_ROUTER_HTTP_LISTEN": _free(),
        "EVENTFN_EXECUTOR_LISTEN": _free(),
        "EVENTFN_RETRIER_LISTEN": _free(),
        "EVENTFN_EGRESS_ALLOW": "127.0.0.1/32",
        "EVENTFN_LOG_LEVEL": "WARNING",
        # Metrics are served, as `eventfn up` serves them (on free ports here).
        **{
            f"EVENTFN_{s}_METRICS_LISTEN": _free()
            for s in ("REGISTRY", "ROUTER", "EXECUTOR", "RETRIER")
        },
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    state = Path(tempfile.mkdtemp(prefix="eventfn-latency-"))
    running = Platform(state)
    try:
        # As shown, without passwords; the benchmarks connect with them.
        endpoints = running.start()
        endpoints |= {"postgres": running.database_url, "nats": running.nats_url}
        yield running, endpoints
    finally:
        running.stop()
        shutil.rmtree(state, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cpu_seconds(pid: int, children: bool = False) -> float:
    """Return a process's user+system CPU seconds (with its reaped children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


@dataclass
class Processes:
    """The platform's processes by role."""

    pids: dict[str, int]

    def sample(self) -> dict[str, float]:
        """Return CPU seconds per role (V8 workers: the executor's children, live or reaped)."""
        out = {role: cpu_seconds(pid) for role, pid in self.pids.items()}
        executor = psutil.Process(self.pids["executor"])
        workers = sum(sum(c.cpu_times()[:2]) for c in executor.children(recursive=True))
        reaped = cpu_seconds(self.pids["executor"], children=True) - out["executor"]
        out["V8 workers"] = workers + reaped
        return out


def processes(running: Platform) -> Processes:
    pids = {spec.name: proc.pid for spec, proc in running.children}
    if running.nats is not None and running.nats.pid is not None:
        pids["nats-server"] = running.nats.pid
    return Processes(pids)


@dataclass
class Sink:
    """Counts arriving events; of those carrying their send time, records the latency."""

    latencies: list[float] = field(default_factory=list)
    arrived: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    first: asyncio.Event = field(default_factory=asyncio.Event)  # a timed event arrived
    url: str = ""

    async def wait_until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Wait until `done()` holds (checked after each request); False after `seconds`."""
        return await wait_changed(self.changed, done, seconds)

    def reset(self) -> None:
        """Forget what arrived so far."""
        self.latencies.clear()
        self.arrived = 0
        self.first.clear()

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        body = orjson.loads(await request.read())
        for event in body if isinstance(body, list) else [body]:
            sent = event.get("properties", {}).get("sent_ns")
            if sent:
                self.latencies.append((now - sent) / 1e6)
                self.first.set()
        self.arrived += len(body) if isinstance(body, list) else 1
        self.changed.set()
        return web.json_response({"ok": True})


async def start_sink(stack: AsyncExitStack) -> Sink:
    """Serve a Sink on an ephemeral loopback port until `stack` closes."""
    sink = Sink()
    sink.url = await serve_posts(stack, sink.handle) + "/in"
    return sink
