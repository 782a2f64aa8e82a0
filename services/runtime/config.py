"""Configuration of the function runtime: workers, limits and egress policy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MAX_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EgressConfig:
    """Where function code may send requests, and through which proxy."""

    # CIDRs ("127.0.0.1/32", "10.1.0.0/16") and host names that bypass the private-address ban.
    allow: tuple[str, ...] = ()
    # None: take HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment (from_environ()).
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()
    # Extra PEM bundle to trust (e.g. a TLS-inspecting corporate proxy), added to the defaults.
    ca_bundle: str | None = None
    # True: the operator's proxy enforces egress itself, so names go to it unchecked here.
    # False (default): names are resolved and checked before the request goes to the proxy.
    proxy_checks_names: bool = False
    max_response_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 20
    # Connections of a worker's pool, shared by its functions; one function instance may
    # hold a quarter of them at once (its further fetches wait for one of its own to end).
    max_connections: int = 256

    @classmethod
    def from_environ(cls, **overrides: object) -> EgressConfig:
        """Build a config whose proxy settings come from the standard proxy variables."""
        env = os.environ

        def pick(name: str) -> str | None:
            return env.get(name) or env.get(name.lower()) or None

        no_proxy = tuple(p.strip() for p in (pick("NO_PROXY") or "").split(",") if p.strip())
        base = cls(
            https_proxy=pick("HTTPS_PROXY"), http_proxy=pick("HTTP_PROXY"), no_proxy=no_proxy
        )
        return cls(**{**base.__dict__, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class RuntimeConfig:
    """Pool shape and per-function limits."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_limit_mb: int = 128
    default_timeout_s: float = 5.0
    # Contexts (one per function version) a worker keeps before evicting the least used.
    max_contexts_per_worker: int = 64
    # A crossing running longer than this makes the pool move other functions off the worker.
    stall_ms: float = 50.0
    watchdog_interval_s: float = 0.01
    # A worker is replaced (drained, then stopped) once its memory passes this, or once it
    # has created this many contexts: STPyV8 never gives a context's memory back (≈ 5.5 MB
    # each), and V8 aborts the process at its heap limit (≈ 1.4 GB).
    worker_rss_limit_mb: int = 1024
    worker_max_contexts: int = 100
    log_cap_bytes: int = 64 * 1024
    egress: EgressConfig = field(default_factory=EgressConfig)
