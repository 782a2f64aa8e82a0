"""Executor settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from pydantic import model_validator

from services.common.settings import DataPlaneSettings
from services.common.workspace_budget import WorkspaceBudget
from services.executor.consumer import MAX_PENDING


class ExecutorSettings(DataPlaneSettings):
    """Everything an executor process reads from its environment, validated at start."""

    # Where the executor serves gRPC (Preview, delivery records, traces, TailEvents).
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
    # Previews a workspace may run at once: each runs in a fresh context on the V8 workers that
    # run every tenant's functions, and a worker is replaced after so many contexts (600
    # previews in 12 s replaced one four times); each executor counts its own.
    executor_previews_burst: int = 20
    # Previews a workspace may run per second past its burst; 0: no limit.
    executor_previews_per_second: float = 1.0
    # TailEvents calls a workspace may start at once: each start counts the stream about 17
    # times (a short-lived JetStream consumer each); each executor counts its own.
    executor_tails_burst: int = 20
    # TailEvents calls a workspace may start per second past its burst; 0: no limit.
    executor_tails_per_second: float = 1.0
    # Packs one pull request asks for (it stays open, delivering each as it is stored).
    executor_fetch_packs: int = 64
    # Packs in flight at once in this process (no more is fetched meanwhile); one instance holds
    # at most a quarter of them.
    executor_max_inflight_packs: int = 512
    # Packs all executors together may hold unacknowledged (the shared consumer's
    # max_ack_pending), -1 for no bound: in flight, or handed back to wait for their
    # instance's share. Past a bound JetStream delivers nothing more to any executor, so one
    # stalled instance's backlog past it stops every tenant: a bound must exceed the in-flight
    # packs of every executor together (executor_max_inflight_packs × executors) plus any
    # backlog of handed-back packs. Set by the latest executor started.
    executor_consumer_max_pending: int = MAX_PENDING
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

    def preview_budget(self) -> WorkspaceBudget:
        """Return the per-workspace budget of previews these settings give."""
        return WorkspaceBudget(
            self.executor_previews_per_second,
            self.executor_previews_burst,
            doing="runs previews",
            rate_variable="EVENTFN_EXECUTOR_PREVIEWS_PER_SECOND",
            burst_variable="EVENTFN_EXECUTOR_PREVIEWS_BURST",
        )

    def tail_budget(self) -> WorkspaceBudget:
        """Return the per-workspace budget of TailEvents starts these settings give."""
        return WorkspaceBudget(
            self.executor_tails_per_second,
            self.executor_tails_burst,
            doing="starts tails",
            rate_variable="EVENTFN_EXECUTOR_TAILS_PER_SECOND",
            burst_variable="EVENTFN_EXECUTOR_TAILS_BURST",
        )

    @model_validator(mode="after")
    def _pending_holds_one_executor(self) -> ExecutorSettings:
        bound = self.executor_consumer_max_pending
        if bound != -1 and bound < 2 * self.executor_max_inflight_packs:
            raise ValueError(
                "EVENTFN_EXECUTOR_CONSUMER_MAX_PENDING must be -1 (no bound) or at least twice "
                "EVENTFN_EXECUTOR_MAX_INFLIGHT_PACKS: it bounds all executors together, "
                "in-flight packs and packs waiting for their instance's share"
            )
        return self
