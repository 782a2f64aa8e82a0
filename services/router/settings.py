"""Router settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.common.packs import DEFAULT_PACK_BYTES
from services.common.settings import DataPlaneSettings
from services.common.workspace_budget import WorkspaceBudget
from services.router.browser_settings import parse_public_url
from services.router.coalesce import BUSY_RATE, WINDOW_SECONDS
from services.router.cors import CorsPolicy
from services.router.normalize import BATCH_MAX_BYTES

MIB = 1024 * 1024


class RouterSettings(DataPlaneSettings):
    """Everything the router reads from its environment, validated at start."""

    # Where the router serves gRPC (Ingest).
    router_listen: str = "127.0.0.1:50052"
    # Prometheus text on http://<this>/metrics; empty: not served.
    router_metrics_listen: str = "127.0.0.1:9465"
    # Where the router serves the HTTP tracking API (/v1/track, /v1/batch, …).
    router_http_listen: str = "127.0.0.1:8088"
    # Where filtered-event counts go (delivery records); unset: counted in logs only.
    database_url: str | None = None
    # How often filtered-event counts are written.
    router_records_flush_seconds: float = 2.0
    # This router's name in NATS connections and WatchConfig.
    router_name: str = "router"
    # Largest JetStream message the router builds; an event over it travels alone.
    router_pack_bytes: int = DEFAULT_PACK_BYTES
    # Largest raw (possibly gzip-compressed) HTTP body read before refusing it.
    router_max_body_bytes: int = BATCH_MAX_BYTES
    # Longest wait (ms) of a pack for the next requests' packs to share its JetStream
    # message, while requests to its instance come at least twice that often and at the
    # minimum rate below (at lower rates none waits); it ends sooner once every recent
    # sender has as many packs waiting as it kept under way lately (one for an HTTP
    # connection, its concurrent calls for a gRPC client), or once they hold 100 events
    # while only other senders' are awaited. 0: only requests arriving during a publish
    # share the next one.
    router_coalesce_window_ms: float = Field(default=WINDOW_SECONDS * 1000, ge=0.0, le=100.0)
    # Requests a second to one instance (per router) from which their packs are held for the
    # coalescing window; below it each request's events go out at once.
    router_coalesce_min_rate: float = Field(default=BUSY_RATE, gt=0.0)
    # How long a request waits for its JetStream acknowledgements before answering 503.
    router_publish_timeout_seconds: float = 5.0
    # Publishes in flight at once, over all requests; more requests wait (back-pressure).
    router_max_pending_publishes: int = 4000
    # Seconds a client is told to wait (Retry-After) when the router cannot take traffic.
    router_retry_after_seconds: int = 5
    # HTTP connections served at once; a request on one more gets 503 with Retry-After.
    router_http_max_connections: int = 10_000
    # Seconds an idle keep-alive HTTP connection is kept.
    router_http_keepalive_seconds: int = 5
    # Seconds a client has to send its whole request body (slow clients get 408).
    router_http_body_timeout_seconds: float = 10.0
    # Seconds a client has to send a request's line and headers, from opening its connection
    # or from the first byte of a further request; then the connection is closed (with a 408
    # if the request had begun): connections that send nothing or trickle bytes are not kept.
    router_http_header_timeout_seconds: float = Field(default=10.0, gt=0.0)
    # Seconds a gRPC call may wait for its client's next message (an IngestStream between two
    # batches, a call whose request has not come); then the router ends it with UNAVAILABLE
    # and the client opens a new stream: streams that send nothing are not kept. More than
    # the publish timeout.
    router_stream_idle_seconds: float = Field(default=300.0, gt=0.0)
    # gRPC calls waiting for their client's message at once (every open IngestStream counts);
    # one more ends the call that waited longest (UNAVAILABLE), first among those that never
    # sent a known write key: clients opening calls and sending nothing hold at most this many
    # (about 25 KB each), and never end a stream that sent one.
    router_grpc_max_waiting_calls: int = Field(default=2000, ge=1)
    # Bytes a source's requests may store a second on this router, counted as stored: an event
    # routed to ten instances is stored, and counted, ten times (one 500 KB batch on a source
    # feeding 1,000 instances is 500 MB). Over it a request gets 429 (gRPC RESOURCE_EXHAUSTED)
    # with the seconds to wait, and nothing of it is stored; the workspace's other sources go
    # on (a browser's write key is public: its flood must not stop the others). 0: no limit.
    # Each router counts on its own.
    router_source_bytes_per_second: float = Field(default=32 * MIB, ge=0.0)
    # Bytes a source's requests may store at once, before the per-second rate applies; a
    # request passes while its source owes nothing, whatever it stores, and its source then
    # owes what it stored past this, until the rate has paid for it.
    router_source_bytes_burst: int = Field(default=256 * MIB, ge=1)
    # Web pages that may send events from a browser: `*` (any, as the write key is public in
    # a page anyway) or comma-separated origins such as `https://shop.example.com`.
    router_cors_origins: str = "*"
    # The tracking API's URL as browsers reach it (e.g. https://track.example.com), put in the
    # settings the browser library loads; unset: the host and scheme each request came in on.
    router_public_url: str | None = None

    @field_validator("router_cors_origins")
    @classmethod
    def _valid_origins(cls, value: str) -> str:
        CorsPolicy.parse(value)
        return value

    @field_validator("router_public_url")
    @classmethod
    def _valid_public_url(cls, value: str | None) -> str | None:
        if value:
            parse_public_url(value)
        return value or None

    @model_validator(mode="after")
    def _idle_outlasts_publishing(self) -> RouterSettings:
        if self.router_stream_idle_seconds <= self.router_publish_timeout_seconds:
            raise ValueError(
                "EVENTFN_ROUTER_STREAM_IDLE_SECONDS must be more than "
                "EVENTFN_ROUTER_PUBLISH_TIMEOUT_SECONDS: a stream waiting for a batch's answer "
                "must not be ended as idle"
            )
        return self

    def store_budget(self) -> WorkspaceBudget:
        """Return the per-source budget of stored bytes these settings give."""
        return WorkspaceBudget(
            self.router_source_bytes_per_second,
            self.router_source_bytes_burst,
            doing="stores events",
            rate_variable="EVENTFN_ROUTER_SOURCE_BYTES_PER_SECOND",
            burst_variable="EVENTFN_ROUTER_SOURCE_BYTES_BURST",
            amount=lambda n: f"{n / MIB:.3g} MiB",
        )

    def cors_policy(self) -> CorsPolicy:
        """Return the CORS policy the settings describe."""
        return CorsPolicy.parse(self.router_cors_origins)

    def public_endpoint(self) -> tuple[str, str] | None:
        """Return (protocol, apiHost) of the public URL, None when it is not set."""
        return parse_public_url(self.router_public_url) if self.router_public_url else None
