"""A tiny loopback HTTP server for the runtime benchmark (run in its own process)."""

from __future__ import annotations

import socket
import sys

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    """Answer every request with a small JSON body."""
    await request.read()
    return web.json_response({"ok": True})


def main() -> None:
    """Serve on the socket passed as fd in argv[1] until killed."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
