"""The data plane's NATS connections notice a cut-off server: pings every 2 s, and a kernel
bound on unacknowledged writes that works even when nats-py's ping is stuck behind a full
socket (tests/netns shows both under a real network cut); a service started before JetStream
answers waits for it."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from services.common import streams
from services.common.settings import DataPlaneSettings
from services.devtools.embedded import EmbeddedNats
from services.devtools.embedded.nats import nats_server_binary
from tests.eventually import eventually


async def test_the_connection_pings_often_and_bounds_unacknowledged_writes(nats_url: str) -> None:
    settings = DataPlaneSettings(nats_url=nats_url)
    nc, _ = await streams.open_streams(settings, nats_url, name="connection-options")
    try:
        assert nc.options["ping_interval"] == streams.PING_INTERVAL_SECONDS
        assert nc.options["max_outstanding_pings"] == streams.MAX_OUTSTANDING_PINGS
        # The option is set through nats-py's internals: this fails if they change.
        writer = nc._transport._io_writer  # pyright: ignore[reportOptionalMemberAccess, reportAttributeAccessIssue]
        sock: socket.socket = writer.get_extra_info("socket")
        set_ms = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert set_ms == streams.UNACKNOWLEDGED_WRITE_SECONDS * 1000
    finally:
        await nc.close()


async def test_a_service_started_before_jetstream_answers_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A NATS cluster that has just started answers JetStream's API only once it has elected
    a leader: an executor started meanwhile exited on its first timeout (tests/netns saw it).
    Here a server without JetStream (no API at all) is replaced, on the same port, by one with
    it; the service waits, reconnects, and ensures the streams."""
    caplog.set_level(logging.WARNING, logger=streams.__name__)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    later = EmbeddedNats(tmp_path / "nats", port=port)
    url = later.url  # with its password, which the first server asks for too
    plain = await asyncio.create_subprocess_exec(
        str(nats_server_binary()),
        *("-a", "127.0.0.1", "-p", str(port), "--user", "eventfn", "--pass", later.password),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: _accepts(port), "the server without JetStream listening")
        settings = DataPlaneSettings(nats_url=url)
        opening = asyncio.create_task(streams.open_streams(settings, url, name="patient"))
        await eventually(
            lambda: [r for r in caplog.records if "JetStream did not answer" in r.getMessage()],
            "the service waiting for JetStream",
        )
        plain.terminate()
        await plain.wait()
        await asyncio.to_thread(later.start)
        nc, js = await asyncio.wait_for(opening, streams.JETSTREAM_WAIT_SECONDS)
        try:
            info = await js.stream_info(streams.EVENTS_STREAM)
            assert info.config.name == streams.EVENTS_STREAM
        finally:
            await nc.close()
    finally:
        if plain.returncode is None:
            plain.kill()
            await plain.wait()
        later.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) == 0
