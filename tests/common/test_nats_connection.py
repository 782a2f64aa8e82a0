"""The data plane's NATS connections notice a cut-off server: pings every 2 s, and a kernel
bound on unacknowledged writes that works even when nats-py's ping is stuck behind a full
socket (tests/netns shows both under a real network cut)."""

from __future__ import annotations

import socket

from services.common import streams
from services.common.settings import DataPlaneSettings


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
