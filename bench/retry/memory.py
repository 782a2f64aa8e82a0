"""The retrier's RSS while 100,000 retries are pending (held in JetStream by `nak(delay)`)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from datetime import UTC, datetime

import grpc
import nats
import orjson
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import JetStreamContext

from bench.common import SERVICE, Control, Servers, line, track
from services.common import streams
from services.common.streams import HISTORY, LAST_ERROR
from services.retrier.scheduler import DURABLE

CHECKPOINTS = (1_000, 25_000, 50_000, 75_000, 100_000)
# Full jitter draws the first delay from [0, base]: with base = cap = 10^6 s, about 0.02 %
# of the messages come due within the run (and are republished to EVENTS, unconsumed here).
LONG_DELAY = 1_000_000.0
DEADLINE = 150.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serving(port: int, seconds: float = 30) -> None:
    """Wait until the retrier's gRPC health check answers SERVING."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + seconds
        while True:
            try:
                check = stub.Check  # pyright: ignore[reportAttributeAccessIssue]
                resp = await check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


async def _publish(js: JetStreamContext, subject: str, first: int, last: int) -> int:
    """Publish RETRY messages first..last-1 as the executor's Handoff does; return the last seq."""
    now = datetime.now(UTC).isoformat()
    history = orjson.dumps([{"attempt": 1, "time": now, "error": "HTTP 503"}]).decode()
    futures = []
    for i in range(first, last):
        headers = {
            streams.MSG_ID: f"held-{i}:retry1",
            streams.ATTEMPT: "1",
            streams.FIRST_ATTEMPT_AT: now,
            LAST_ERROR: "HTTP 503",
            HISTORY: history,
        }
        body = b"[" + orjson.dumps(track(i, "held")) + b"]"
        futures.append(await js.publish_async(subject, body, headers=headers))
    acks = await asyncio.gather(*futures)
    return max(a.seq for a in acks)


async def _all_delivered(js: JetStreamContext, last_seq: int) -> tuple[int, float]:
    """Wait until the retrier's consumer was delivered everything up to last_seq."""
    start = time.perf_counter()
    while time.perf_counter() - start < DEADLINE:
        info = await js.consumer_info(streams.RETRY_STREAM, DURABLE)
        delivered = info.delivered.stream_seq if info.delivered else 0
        if info.num_pending == 0 and (delivered or 0) >= last_seq:
            return int(info.num_ack_pending or 0), time.perf_counter() - start
        await asyncio.sleep(0.25)
    raise TimeoutError(f"the retrier did not take RETRY messages up to seq {last_seq}")


async def held_memory(srv: Servers, control: Control) -> None:
    """Run a retrier process, fill RETRY with held messages, print its RSS along the way."""
    iid = await control.instance(
        "async function onTrack(event, settings) {}", "http://127.0.0.1:9/"
    )
    subject = streams.retry_subject(control.workspace_id, iid)
    port = _free_port()
    env = {
        **os.environ,
        "EVENTFN_NATS_URL": srv.nats.url,
        "EVENTFN_REGISTRY_ADDR": control.addr,
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_RETRIER_LISTEN": f"127.0.0.1:{port}",
        "EVENTFN_STATE_DIR": str(srv.root / "retrier"),
        "EVENTFN_LOG_LEVEL": "WARNING",
        "EVENTFN_RETRY_BASE_SECONDS": str(LONG_DELAY),
        "EVENTFN_RETRY_CAP_SECONDS": str(LONG_DELAY),
        "EVENTFN_RETRY_WINDOW_SECONDS": str(LONG_DELAY * 10),
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.retrier", env=env)
    nc = await nats.connect(srv.nats.url)
    try:
        await _serving(port)
        await asyncio.sleep(1.0)
        rss = psutil.Process(proc.pid).memory_info().rss
        print("  memory (retrier in its own process, 1 event per RETRY message):", flush=True)
        line("retrier RSS, idle", rss / 2**20, "MiB")
        js = nc.jetstream(publish_async_max_pending=4000)
        samples: list[tuple[int, int]] = []
        published = 0
        for checkpoint in CHECKPOINTS:
            t = time.perf_counter()
            last_seq = await _publish(js, subject, published, checkpoint)
            publish_s = time.perf_counter() - t
            published = checkpoint
            held, waited = await _all_delivered(js, last_seq)
            await asyncio.sleep(0.5)
            rss = psutil.Process(proc.pid).memory_info().rss
            samples.append((checkpoint, rss))
            print(
                f"  {checkpoint:>7,} pending: RSS {rss / 2**20:7.1f} MiB, {held:,} held by the "
                f"consumer (published in {publish_s:.1f} s, taken {waited:.1f} s later)",
                flush=True,
            )
        (n0, r0), (n1, r1) = samples[0], samples[-1]
        per_k = (r1 - r0) / ((n1 - n0) / 1000)
        line(f"RSS growth per 1k pending ({n0:,} → {n1:,})", per_k / 1024, "KiB")
        print(
            f"    = {(r1 - r0) / r0:+.1%} of the RSS at {n0:,} pending "
            f"({r0 / 2**20:.1f} → {r1 / 2**20:.1f} MiB)",
            flush=True,
        )
    finally:
        await nc.close()
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
