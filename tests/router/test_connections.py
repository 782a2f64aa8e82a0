"""10,000 concurrent connections on loopback: the router answers each (200, or 503 with
Retry-After when over its bound) and stays up; nothing crashes, memory stays bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.eventually import eventually
from tests.registry.conftest import SERVICE, Registry, make_source

CONNECTIONS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(port: int, request: bytes) -> int:
    """Open a connection, send one request, return the status code (0: refused/reset)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(request)
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1") else 0
    except (OSError, IndexError, ValueError):
        return 0
    finally:
        writer.close()


@pytest.mark.slow
async def test_ten_thousand_concurrent_connections(
    registry: Registry, nats_url: str, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CONNECTIONS + 1000:
        pytest.skip(f"needs {CONNECTIONS + 1000} open files, the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _, owner = await registry.workspace("Crowd")
    source = await make_source(registry, owner, "s")
    http_port = free_port()
    env = {
        **os.environ,
        "EVENTFN_NATS_URL": nats_url,
        "EVENTFN_REGISTRY_ADDR": f"127.0.0.1:{registry.port}",
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_ROUTER_LISTEN": "127.0.0.1:0",
        "EVENTFN_ROUTER_HTTP_LISTEN": f"127.0.0.1:{http_port}",
    }
    log = (tmp_path / "router.log").open("wb")
    router = subprocess.Popen(  # noqa: ASYNC220 — started once, before the load
        [sys.executable, "-m", "services.router"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

        async def healthy() -> int:
            assert router.poll() is None, (tmp_path / "router.log").read_text()[-2000:]
            return await one(http_port, health)

        await eventually(
            healthy, "the router process answering /health", until=lambda s: s == 200, seconds=60
        )
        rss_before = psutil.Process(router.pid).memory_info().rss
        body = b'{"userId": "u", "event": "E"}'
        key = base64.b64encode(f"{source.write_key}:".encode())
        request = (
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Basic " + key + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        async with asyncio.timeout(240):
            statuses = await asyncio.gather(*(one(http_port, request) for _ in range(CONNECTIONS)))
        counts = {s: statuses.count(s) for s in set(statuses)}
        print(f"{CONNECTIONS} connections: statuses {counts}")
        assert set(counts) <= {200, 503, 0}, counts
        assert counts.get(200, 0) > 0, counts
        assert router.poll() is None, "the router died under load"
        assert await one(http_port, health) == 200, "the router must still answer afterwards"
        growth = psutil.Process(router.pid).memory_info().rss - rss_before
        assert growth < 512 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"
    finally:
        router.terminate()
        router.wait(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
