"""CORS for the tracking API, so that web pages on other origins can send events.

Browser libraries (analytics.js / analytics-next) post from the page's origin with
`Authorization: Basic` and `Content-Type: text/plain`, so every POST is preflighted. The
write key is public in a browser anyway, and no cookies are involved: by default any origin
may send (`Access-Control-Allow-Origin: *`), as Segment's own API allows. A list of origins
(`EVENTFN_ROUTER_CORS_ORIGINS`) restricts it: the router then echoes a listed origin
(with `Vary: Origin`) and refuses requests that carry any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Headers a tracking client may send; a preflight may ask for more (custom headers that a
# library is configured to add), which are allowed too: the API ignores unknown headers.
ALLOWED_HEADERS = (
    b"authorization",
    b"content-type",
    b"content-encoding",
    b"x-retry-count",
    b"traceparent",
    b"tracestate",
)
ALLOWED_METHODS = b"GET, POST, OPTIONS"
# Chromium caps a cached preflight at 2 hours; Firefox at 24.
MAX_AGE_SECONDS = 7200
# Headers a page's script may read on a cross-origin answer (Retry-After drives backoff).
EXPOSED_HEADERS = b"retry-after"

_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)
_HEADER_NAME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_MAX_REQUESTED_HEADERS = 1024

Headers = list[tuple[bytes, bytes]]


class OriginNotAllowedError(Exception):
    """A browser request came from an origin the router is not configured to accept."""

    def __init__(self, origin: str) -> None:
        super().__init__(
            f"origin {origin!r} may not send events here; "
            "add it to EVENTFN_ROUTER_CORS_ORIGINS (comma-separated) or set it to *"
        )
        self.origin = origin


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which origins may call the tracking API from a browser; None means any."""

    origins: frozenset[str] | None = None

    @classmethod
    def parse(cls, text: str) -> CorsPolicy:
        """Read `*` (any origin) or comma-separated origins such as `https://shop.example`."""
        items = [item.strip().rstrip("/") for item in text.split(",") if item.strip()]
        if not items or "*" in items:
            if len(items) > 1:
                raise ValueError("EVENTFN_ROUTER_CORS_ORIGINS: use either * or a list of origins")
            return cls(None)
        for item in items:
            if not _ORIGIN.match(item):
                raise ValueError(
                    f"EVENTFN_ROUTER_CORS_ORIGINS: {item!r} is not an origin; "
                    "write scheme://host[:port], e.g. https://shop.example.com"
                )
        return cls(frozenset(item.lower() for item in items))

    def response_headers(self, origin: bytes | None) -> Headers:
        """Return the CORS headers of an answer to a request from `origin` (or none)."""
        if self.origins is None:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
            ]
        headers: Headers = [(b"vary", b"Origin")]
        if origin is not None and self.allows(origin):
            headers.append((b"access-control-allow-origin", origin))
            headers.append((b"access-control-expose-headers", EXPOSED_HEADERS))
        return headers

    def preflight_headers(
        self, origin: bytes | None, requested_headers: bytes | None, private_network: bool
    ) -> Headers:
        """Return the headers of a 204 answer to a preflight (OPTIONS) request."""
        headers = self.response_headers(origin)
        headers += [
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", _allowed_headers(requested_headers)),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
        ]
        if private_network:
            # Chromium's Private Network Access: a public page may reach a router on an
            # intranet address only when the router says so.
            headers.append((b"access-control-allow-private-network", b"true"))
        return headers

    def allows(self, origin: bytes) -> bool:
        """Tell whether a request with this Origin header may be served."""
        if self.origins is None:
            return True
        return origin.decode("latin-1").lower() in self.origins

    def check(self, origin: bytes | None) -> None:
        """Refuse a browser request from an origin that is not listed."""
        if origin is not None and not self.allows(origin):
            raise OriginNotAllowedError(origin.decode("latin-1"))


def _allowed_headers(requested: bytes | None) -> bytes:
    """Allow the usual headers plus the well-formed ones a preflight asks for."""
    names: list[bytes] = list(ALLOWED_HEADERS)
    if requested and len(requested) <= _MAX_REQUESTED_HEADERS:
        for part in requested.split(b","):
            name = part.strip().lower()
            if name and _HEADER_NAME.match(name) and name not in names:
                names.append(name)
    return b", ".join(names)
