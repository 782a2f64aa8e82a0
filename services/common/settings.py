"""Settings every service shares, read from `EVENTFN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Base of every service's settings: env prefix, state dir, logging."""

    model_config = SettingsConfigDict(env_prefix="EVENTFN_", extra="ignore")

    # Where generated state is kept (keys, tokens, embedded servers' data, logs).
    state_dir: Path = Path(".eventfn")
    # Log level: DEBUG, INFO, WARNING or ERROR.
    log_level: str = "INFO"
    # `text` (one line per record) or `json` (one object per line, with trace_id/span_id).
    log_format: Literal["text", "json"] = "text"
    # The data plane's token for the registry (WatchConfig, versions, audit records); the
    # registry accepts it, and every data-plane service needs it.
    service_token: str | None = None
    # Replicas of the EVENTS, RETRY and DEAD streams: 1, or 3 or 5 on a NATS cluster.
    stream_replicas: int = 1
    # How long dead letters are kept (the DEAD stream's max age). Every service may create or
    # update the streams, so they all read the same value.
    dead_retention_days: float = 14.0
    # Retries held per instance (messages in its RETRY subject, each one pack's retryable
    # events). Past it the executor dead-letters the instance's retryable events at once,
    # replayable, saying why: one tenant's retry storm cannot fill the disk or slow everyone's
    # retries. Every service may create or update the streams, so they all read it.
    retry_max_per_instance: int = 100_000
    # Packs of dead letters kept per instance (messages in its DEAD subject, each up to one
    # pack's events). Past it the instance's newly failed events are discarded, each hand-off
    # logged with the reason, and a replay or purge of only some letters of a pack is refused
    # (it stores the pack's others again): what one tenant's failures store is bounded (by
    # packs, not bytes: at most this many packs of up to 1 MiB per instance). Every
    # service may create or update the streams, so they all read it.
    dead_max_per_instance: int = 1_000_000

    def required_service_token(self, service: str) -> str:
        """Return the service token, or fail at start: data-plane services read WatchConfig."""
        if not self.service_token:
            raise ValueError(f"EVENTFN_SERVICE_TOKEN is required: the {service} reads WatchConfig")
        return self.service_token


class DataPlaneSettings(CommonSettings):
    """Settings of the data-plane services: where NATS and the registry's WatchConfig are."""

    # One URL, or a cluster's URLs separated by commas.
    nats_url: str = "nats://127.0.0.1:4222"
    # Where the registry's gRPC API is (host:port).
    registry_addr: str = "127.0.0.1:50051"
    # The durable JetStream consumer every executor process shares (its backlog is the
    # signal executors scale on; the router reports it).
    executor_consumer: str = "executor"
    # Keep recent spans in the platform's own JetStream (stream TRACES) for `eventfn trace`.
    trace_store: bool = False
    # How long the TRACES stream keeps spans.
    trace_retention_seconds: float = 3600.0


def sqlalchemy_url(url: str) -> str:
    """Turn a postgresql:// URL into SQLAlchemy's asyncpg form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('@')[-1]!r}")


def asyncpg_url(url: str) -> str:
    """Turn a SQLAlchemy or libpq URL into the form asyncpg accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def nats_servers(url: str) -> list[str]:
    """Split EVENTFN_NATS_URL, which may list a cluster's servers separated by commas."""
    return [u.strip() for u in url.split(",") if u.strip()]
