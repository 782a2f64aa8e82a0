"""Executor settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from services.common.settings import DataPlaneSettings


class ExecutorSettings(DataPlaneSettings):
    """Everything an executor process reads from its environment, validated at start."""

    # Where the executor serves gRPC (Preview, ListDeliveries).
    executor_listen: str = "127.0.0.1:50053"
    # Prometheus text on http://<this>/metrics; empty: not served.
    executor_metrics_listen: str = "127.0.0.1:9466"
    # PostgreSQL where delivery records (counts per minute, failure samples) are written.
    database_url: str
    # This executor's name in NATS connections, WatchConfig and logs.
    executor_name: str = "executor"
    # What the shared durable consumer (executor_consumer) reads.
    executor_subjects: str = "events.>"
    # V8 worker processes of this executor (0: one per core).
    executor_workers: int = 0
    # Packs one pull request asks for (it stays open, delivering each as it is stored).
    executor_fetch_packs: int = 64
    # Packs in flight at once in this process (no more is fetched meanwhile); one instance holds
    # at most a quarter of them.
    executor_max_inflight_packs: int = 512
    # In-flight invocations per instance, so one hot instance cannot starve the others.
    executor_instance_concurrency: int = 10
    # How long JetStream waits for an ack before redelivering a pack elsewhere.
    executor_ack_wait_seconds: float = 120.0
    # On SIGTERM: time given to in-flight invocations before the rest is handed back.
    executor_shutdown_grace_seconds: float = 20.0
    # How often delivery records are written.
    executor_records_flush_seconds: float = 2.0
    # Failure samples kept per instance and minute.
    executor_samples_per_minute: int = 20
    # Days delivery records are kept.
    executor_records_retention_days: int = 7
    # Function egress: comma-separated CIDRs / hosts allowed despite being private addresses.
    egress_allow: str = ""
    # A CA bundle (PEM file) function egress trusts besides the system's.
    egress_ca_bundle: str | None = None
    # True: the HTTP(S) proxy enforces egress itself; names go to it without a check here.
    egress_proxy_checks_names: bool = False
