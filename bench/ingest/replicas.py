"""The router tier as deployed: several router processes (compose.yaml and the Kubernetes
manifests run two replicas; ARCHITECTURE.md scales out by processes, one per core), each
load split among them as a load balancer would spread its clients.

Each router runs in a child process of its own (the same `start_router` as in-process, on any
free ports), so its CPU is read from /proc; the loads run in as many child processes, one per
router, with the in-process load's concurrency divided among them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import uvloop

from bench.common import Control, Load, in_child, router_values
from bench.platform import cpu_seconds


@dataclass(frozen=True)
class Replica:
    """One router process: its pid and where it serves gRPC and HTTP."""

    pid: int
    grpc_addr: str
    http_url: str


def _serve(values: dict[str, Any], ports: Any, stop: Event) -> None:
    """Run one router (in a child process) until `stop` is set; report its ports once ready."""
    from services.common.service import tune_gc
    from services.router.app import start_router
    from services.router.settings import RouterSettings

    async def main() -> None:
        async with AsyncExitStack() as stack:
            router = await start_router(RouterSettings(**values), stack)
            await router.watcher.ready.wait()
            tune_gc()  # as the router's main does once it has started
            ports.put((router.grpc_port, router.http_port))
            await asyncio.to_thread(stop.wait)

    uvloop.run(main())


async def start_replicas(
    control: Control, nats_url: str, count: int, stack: AsyncExitStack
) -> list[Replica]:
    """Start `count` router processes against the control plane; stopped with the stack."""
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    values = router_values(control, nats_url)
    replicas = []
    for _ in range(count):
        ports = spawn.Queue()
        process = spawn.Process(target=_serve, args=(values, ports, stop), daemon=True)
        process.start()
        stack.callback(_stop, process, stop)
        grpc_port, http_port = await asyncio.to_thread(ports.get, True, 60)
        assert process.pid is not None
        replicas.append(
            Replica(process.pid, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
        )
    return replicas


def _stop(process: multiprocessing.process.BaseProcess, stop: Event) -> None:
    stop.set()
    process.join(15)
    if process.is_alive():
        process.kill()


@dataclass(frozen=True)
class TierLoad:
    """A load spread over the routers: events/s, and CPU µs per event of the routers (each),
    of the load generators together and of the NATS server."""

    events: int
    elapsed: float
    routers: list[float]
    generators: float
    nats: float
    failures: int

    @property
    def rate(self) -> float:
        """Accepted events per second."""
        return self.events / self.elapsed if self.elapsed else 0.0

    @property
    def machine(self) -> float:
        """What the machine spent per event, all processes together."""
        return sum(self.routers) + self.generators + self.nats


async def spread(
    pool: ProcessPoolExecutor,
    replicas: list[Replica],
    load: Callable[[Replica], tuple[Callable[..., Load], tuple[Any, ...]]],
    nats_pid: int,
) -> TierLoad:
    """Run one load child per router at once; measure the routers' and NATS's CPU meanwhile."""
    routers = [cpu_seconds(r.pid) for r in replicas]
    nats = cpu_seconds(nats_pid)
    runs: list[Awaitable[Load]] = []
    for replica in replicas:
        fn, args = load(replica)
        runs.append(in_child(pool, fn, *args))
    loads = await asyncio.gather(*runs)
    events = sum(x.events for x in loads)
    per_event = 1e6 / max(events, 1)
    return TierLoad(
        events,
        max(x.elapsed for x in loads),
        [
            (cpu_seconds(r.pid) - before) * per_event
            for r, before in zip(replicas, routers, strict=True)
        ],
        sum(x.cpu for x in loads) * per_event,
        (cpu_seconds(nats_pid) - nats) * per_event,
        sum(x.failures for x in loads),
    )
