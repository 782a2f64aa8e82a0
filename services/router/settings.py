"""Router settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from services.common.packs import DEFAULT_PACK_BYTES
from services.common.settings import CommonSettings
from services.router.normalize import BATCH_MAX_BYTES


class RouterSettings(CommonSettings):
    """Everything the router reads from its environment, validated at start."""

    router_listen: str = "127.0.0.1:50052"
    router_http_listen: str = "127.0.0.1:8088"
    nats_url: str = "nats://127.0.0.1:4222"
    registry_addr: str = "127.0.0.1:50051"
    # Where filtered-event counts go (delivery records); unset: counted in logs only.
    database_url: str | None = None
    router_records_flush_seconds: float = 2.0
    router_name: str = "router"
    # Largest JetStream message the router builds; an event over it travels alone.
    router_pack_bytes: int = DEFAULT_PACK_BYTES
    # Largest raw (possibly gzip-compressed) HTTP body read before refusing it.
    router_max_body_bytes: int = BATCH_MAX_BYTES
    # How long a request waits for its JetStream acknowledgements before answering 503.
    router_publish_timeout_seconds: float = 5.0
    # Publishes in flight at once, over all requests; more requests wait (back-pressure).
    router_max_pending_publishes: int = 4000
    # Seconds a client is told to wait (Retry-After) when the router cannot take traffic.
    router_retry_after_seconds: int = 5
    # HTTP connections served at once; more are refused by uvicorn with 503.
    router_http_max_connections: int = 10_000
    # Seconds an idle keep-alive HTTP connection is kept.
    router_http_keepalive_seconds: int = 5
    # Seconds a client has to send its whole request body (slow clients get 408).
    router_http_body_timeout_seconds: float = 10.0
