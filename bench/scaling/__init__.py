"""Scaling benchmark: events/s delivered by 1, 2 and 4 executor processes sharing one consumer.

For each count, a backlog of EVENTS events (an `onTrack` making one fetch per event to a local
sink) is stored first through a router process, then that many executor processes (one V8
worker each, as the Kubernetes manifests run them) start on a consumer of their own and drain
it. The rate is taken between 10 % and 90 % delivered, so process start-up does not count;
CPU µs per event of the executors (with their V8 workers) and of the router come from /proc,
with the largest resident set sizes: the figures docs/operations.md sizes pods from.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import nats
import nats.js.errors
import psutil
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import (
    CORES,
    SERVICE,
    Control,
    Servers,
    header,
    http_load,
    in_child,
    servers,
    start_control,
    start_sink,
)
from services.common import streams
from services.devtools.embedded.process import free_port

EVENTS = 20_000
PER_REQUEST = 100
COUNTS = (1, 2, 4)
DEADLINE = 180.0
ON_TRACK = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/track', {method: 'POST', body: JSON.stringify(event)})
}
"""


@dataclass
class Usage:
    """CPU seconds and largest resident set of a process tree (a service and its workers)."""

    cpu: float = 0.0
    rss_main: int = 0
    rss_child: int = 0


def usage(pid: int) -> Usage:
    """Read the CPU time and memory of a process and its children from /proc."""
    root = psutil.Process(pid)
    result = Usage()
    for proc in [root, *root.children(recursive=True)]:
        try:
            times, rss = proc.cpu_times(), proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        result.cpu += times.user + times.system
        if proc.pid == pid:
            result.rss_main = rss
        else:
            result.rss_child = max(result.rss_child, rss)
    return result


def serving(address: str) -> bool:
    """Tell whether a gRPC health check at address answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # pyright: ignore[reportAttributeAccessIssue]
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def spawn(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m services.<service>`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=env, stdout=out, stderr=out
        )


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the processes and wait for them."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)


def base_env(srv: Servers, control: Control) -> dict[str, str]:
    """Return the environment every service process of the benchmark shares."""
    return {
        **os.environ,
        "EVENTFN_NATS_URL": srv.nats.url,
        "EVENTFN_REGISTRY_ADDR": control.addr,
        "EVENTFN_DATABASE_URL": control.database_url,
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_LOG_LEVEL": "WARNING",
        "EVENTFN_EGRESS_ALLOW": "127.0.0.1/32",
        "EVENTFN_ROUTER_METRICS_LISTEN": "",
        "EVENTFN_EXECUTOR_METRICS_LISTEN": "",
    }


async def wait(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll a condition every 50 ms; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def routed(http: str, control: Control, srv: Servers, instance_id: str) -> int:
    """Send single probe events until the router (which learns of a new instance through
    WatchConfig) stores one for the instance; return how many were sent."""
    nc = await nats.connect(srv.nats.url)
    try:
        js = nc.jetstream()
        async with aiohttp.ClientSession(base_url=http) as session:
            for sent in range(1, 200):
                event = {"type": "track", "event": "probe", "userId": "u"}
                event["messageId"] = f"probe-{instance_id}-{sent}"
                async with session.post(
                    "/v1/track", json=event, auth=aiohttp.BasicAuth(control.write_key, "")
                ) as response:
                    await response.read()
                try:
                    await js.get_last_msg(
                        streams.EVENTS_STREAM,
                        streams.events_subject(control.workspace_id, instance_id),
                    )
                    return sent
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(0.05)
    finally:
        await nc.close()
    raise RuntimeError(f"the router never routed to {instance_id}")


async def run() -> None:
    """Store a backlog per executor count, then drain it with that many executors."""
    header(
        f"bench.scaling: {EVENTS:,} stored events drained by 1, 2, 4 executor processes "
        "(one V8 worker each), onTrack with one fetch per event"
    )
    with servers() as srv:
        async with AsyncExitStack() as stack:
            control = await start_control(srv, stack)
            sink = await start_sink(stack)
            logs = srv.root / "logs"
            logs.mkdir()
            env = base_env(srv, control)
            router_grpc, router_http = free_port(), free_port()
            router = spawn(
                "router",
                {
                    **env,
                    "EVENTFN_ROUTER_LISTEN": f"127.0.0.1:{router_grpc}",
                    "EVENTFN_ROUTER_HTTP_LISTEN": f"127.0.0.1:{router_http}",
                },
                logs / "router.log",
            )
            stack.callback(stop, [router])
            assert await wait(lambda: serving(f"127.0.0.1:{router_grpc}"), 60), "router down"
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown)
            http = f"http://127.0.0.1:{router_http}"
            rows = []
            for count in COUNTS:
                iid = await control.instance(ON_TRACK, sink.url)
                await routed(http, control, srv, iid)
                run = f"scale{count}"
                before = usage(router.pid).cpu
                load = await in_child(
                    pool,
                    http_load,
                    http,
                    control.write_key,
                    PER_REQUEST,
                    EVENTS // PER_REQUEST,
                    8,
                    120,
                    run,
                )
                router_us = (usage(router.pid).cpu - before) / max(load.events, 1) * 1e6
                if load.failures:
                    print(f"    {load.failures} ingest requests refused", flush=True)
                sink.ids.clear()
                executor_env = {
                    **env,
                    "EVENTFN_EXECUTOR_WORKERS": "1",
                    "EVENTFN_EXECUTOR_CONSUMER": f"scale-{count}-{uuid.uuid4().hex[:6]}",
                    "EVENTFN_EXECUTOR_SUBJECTS": f"events.*.{iid}",
                }
                executors = [
                    spawn(
                        "executor",
                        {
                            **executor_env,
                            "EVENTFN_EXECUTOR_NAME": f"scale-{count}-{i}",
                            "EVENTFN_EXECUTOR_LISTEN": f"127.0.0.1:{free_port()}",
                        },
                        logs / f"executor-{count}-{i}.log",
                    )
                    for i in range(count)
                ]
                try:
                    total = load.events

                    def delivered(prefix: str = f"{run}-") -> int:
                        return sum(1 for i in sink.ids if i.startswith(prefix))

                    assert await wait(lambda t=total: delivered() >= t // 10, DEADLINE)
                    t10 = time.perf_counter()
                    cpu10 = sum(usage(p.pid).cpu for p in executors)
                    assert await wait(lambda t=total: delivered() >= t * 9 // 10, DEADLINE)
                    t90 = time.perf_counter()
                    at90 = [usage(p.pid) for p in executors]
                    done = total * 9 // 10 - total // 10
                    rate = done / (t90 - t10)
                    cpu_us = (sum(u.cpu for u in at90) - cpu10) / done * 1e6
                    complete = await wait(lambda t=total: delivered() >= t, DEADLINE)
                    rows.append(
                        (
                            count,
                            rate,
                            cpu_us,
                            max(u.rss_main for u in at90),
                            max(u.rss_child for u in at90),
                            router_us,
                            complete,
                        )
                    )
                finally:
                    stop(executors)
                await control.delete_instance(iid)
            base = rows[0][1]
            print(f"  {CORES} cores; rate between 10 % and 90 % delivered", flush=True)
            print(
                "  executors  events/s  × 1 executor  executor CPU µs/event  "
                "RSS executor / V8 worker  router CPU µs/event (ingest, 100/request)"
            )
            for count, rate, cpu_us, rss_main, rss_child, router_us, complete in rows:
                print(
                    f"  {count:9d}  {rate:8.0f}  {rate / base:12.2f}  {cpu_us:21.0f}  "
                    f"{rss_main / 2**20:8.0f} / {rss_child / 2**20:.0f} MiB  "
                    f"{router_us:10.0f}{'' if complete else '  (incomplete)'}",
                    flush=True,
                )


def main() -> None:
    """Run the scaling benchmark (`python -m bench scaling`)."""
    uvloop.run(run())
