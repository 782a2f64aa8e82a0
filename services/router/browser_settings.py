"""The source settings that Segment's browser library loads at start, served by the router.

analytics-next (`@segment/analytics-next`, analytics.js 2.0) fetches
`{cdnURL}/v1/projects/{writeKey}/settings` before it sends anything. The smallest document
that makes it send to eventfn, checked against its source (1.84):

- `integrations` lists only `Segment.io`: any other entry makes the library load that
  destination's code from Segment's CDN.
- `Segment.io.apiKey` is the write key the library puts in each body (`writeKey`) and in
  `Authorization: Basic`; `apiHost` (host[/path] without a scheme, ending in `/v1`) and
  `protocol` say where it posts (`{protocol}://{apiHost}/t`, `/p`, …, `/b`). A page's own
  `integrations['Segment.io'].apiHost` load option overrides them.
- `addBundledMetadata: false` keeps Segment's `_metadata` routing hints out of the events.
- `metrics.sampleRate: 0` stops the library's own usage metrics, which it would otherwise
  post to api.segment.io every 30 seconds.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import orjson

_HOST = re.compile(rb"^(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def parse_public_url(url: str) -> tuple[str, str]:
    """Split a public router URL into (protocol, apiHost), e.g. ('https', 'x.io/v1')."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(
            f"EVENTFN_ROUTER_PUBLIC_URL: {url!r} is not an http(s) URL; "
            "write the tracking API's address as browsers reach it, e.g. https://track.example.com"
        )
    return parts.scheme, parts.netloc + parts.path.rstrip("/") + "/v1"


def request_api_host(host: bytes | None, scheme: str) -> tuple[str, str] | None:
    """Return (protocol, apiHost) for the Host a request came in on, None if unusable."""
    if not host or not _HOST.match(host):
        return None
    return ("https" if scheme == "https" else "http"), host.decode("ascii") + "/v1"


def settings_document(write_key: str, endpoint: tuple[str, str] | None) -> bytes:
    """Return the settings JSON for a source's write key; `endpoint` is (protocol, apiHost)."""
    segment: dict[str, Any] = {"apiKey": write_key, "addBundledMetadata": False}
    if endpoint is not None:
        segment["protocol"], segment["apiHost"] = endpoint
    return orjson.dumps({"integrations": {"Segment.io": segment}, "metrics": {"sampleRate": 0}})
