"""Browser tests: headless Chromium (Debian's package) driven by playwright-core from Node,
a page served on its own origin, and the real platform with a local sink."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.pipeline.conftest import platform, sink
from tests.registry.conftest import registry

__all__ = ["platform", "registry", "sink"]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("drive.mjs")
CHROMIUM = Path("/usr/bin/chromium")
# The UMD build of the npm package: `AnalyticsNext.AnalyticsBrowser` as a global, no build step.
ANALYTICS_NEXT = ROOT / "node_modules/@segment/analytics-next/dist/umd/index.js"
PLAYWRIGHT = ROOT / "node_modules/playwright-core/package.json"


@dataclass
class BrowserRun:
    """What one page did in the browser: its result, its requests, console and errors."""

    result: Any
    requests: list[dict[str, Any]]
    console: list[str]
    errors: list[str]

    def explain(self) -> str:
        """Describe the run for an assertion message."""
        return orjson.dumps(
            {"errors": self.errors, "requests": self.requests, "console": self.console},
            option=orjson.OPT_INDENT_2,
        ).decode()


@pytest.fixture(scope="session")
def browser_tools() -> tuple[str, Path]:
    """Return node and Chromium, failing with how to install them when missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: `make test` installs it, "
            "or run `apt-get install -y chromium` (as root)",
            pytrace=False,
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20+ (`make install` needs it too)")
    if not ANALYTICS_NEXT.exists() or not PLAYWRIGHT.exists():
        pytest.fail(
            "@segment/analytics-next or playwright-core is missing from node_modules: "
            "run `make install`",
            pytrace=False,
        )
    return node, CHROMIUM


@dataclass
class PageServer:
    """A real HTTP server on 127.0.0.1 serving test pages and analytics-next (its own origin)."""

    origin: str = ""
    pages: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """Return the address of a page."""
        return f"{self.origin}/{name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve a page by name, or the library."""
        name = request.match_info["name"]
        if name == "analytics-next.js":
            return web.FileResponse(ANALYTICS_NEXT)
        html = self.pages.get(name)
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(text=html, content_type="text/html")


@pytest.fixture
async def page_server() -> AsyncIterator[PageServer]:
    """Serve pages on an ephemeral loopback port: an origin other than the router's."""
    server = PageServer()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


async def open_page(tools: tuple[str, Path], url: str, *, seconds: float = 60) -> BrowserRun:
    """Open a page in headless Chromium and wait until it sets `window.__result`."""
    node, chromium = tools
    process = await asyncio.create_subprocess_exec(
        node,
        str(DRIVER),
        url,
        str(chromium),
        str(int(seconds * 1000)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the browser driver did not finish within {seconds + 30} s") from None
    if process.returncode != 0 or not out.strip():
        raise AssertionError(
            f"the browser driver failed (exit {process.returncode}): {err.decode()[-2000:]}"
        )
    report = orjson.loads(out.splitlines()[-1])
    return BrowserRun(report["result"], report["requests"], report["console"], report["errors"])
