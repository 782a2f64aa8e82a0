"""The /metrics server a service starts: it serves scrapes, and a stopped service gives its
port back at once (a restart on the same address needs it)."""

from __future__ import annotations

import re
import socket
import urllib.request
from contextlib import AsyncExitStack

import pytest

from services.common.metrics import start_metrics


def _scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


@pytest.mark.parametrize(("listen", "host"), [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "[::1]")])
async def test_metrics_are_scraped_and_a_stopped_service_frees_the_port(
    listen: str, host: str
) -> None:
    async with AsyncExitStack() as stack:
        metrics = start_metrics("eventfn-router", listen, stack)
        metrics.meter.create_counter("eventfn_probe_total").add(3)
        assert re.search(r"^eventfn_probe_total\{.*\} 3\.0$", _scrape(host, metrics.port), re.M)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as again:
        # As a restarted service binds (the scrape's connection may be in TIME_WAIT): only a
        # socket still listening refuses it.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((host.strip("[]"), metrics.port))
        again.listen()
