"""Retrier settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from datetime import timedelta

from services.common.settings import DataPlaneSettings
from services.common.workspace_budget import WorkspaceBudget
from services.retrier.backoff import RetryPolicy


class RetrierSettings(DataPlaneSettings):
    """Everything a retrier process reads from its environment, validated at start."""

    # Where the retrier serves gRPC (dead letters: list, replay, purge).
    retrier_listen: str = "127.0.0.1:50054"
    # Prometheus text on http://<this>/metrics; empty: not served.
    retrier_metrics_listen: str = "127.0.0.1:9467"
    # This retrier's name in NATS connections, WatchConfig and logs.
    retrier_name: str = "retrier"
    # Backoff: the wait after attempt n is uniform in [0, min(cap, base * factor^(n-1))];
    # no attempt is scheduled past `window` after the first one.
    retry_base_seconds: float = 1.0
    # Backoff growth per attempt.
    retry_factor: float = 2.0
    # Longest wait between two attempts.
    retry_cap_seconds: float = 600.0
    # How long after the first attempt events are retried before they go to DEAD.
    retry_window_seconds: float = 4 * 3600.0
    # A first-attempt time this far in the future is accepted (clocks of other hosts).
    retry_clock_skew_tolerance_seconds: float = 5.0
    # A held message comes back at least this often, to re-check window and instance.
    retry_max_hold_seconds: float = 300.0
    # A retry whose instance is unknown is discarded once its RETRY message is this old
    # (a newly created instance may reach this process's config view a little late).
    retry_unknown_instance_grace_seconds: float = 30.0
    # RETRY messages one pull request asks for (it stays open, delivering each as it is stored).
    retrier_fetch: int = 256
    # How long JetStream waits for a retrier's ack before redelivering a RETRY message.
    retrier_ack_wait_seconds: float = 30.0
    # Replays (ReplayDeadLetters calls) a workspace may start at once: each scans the
    # instance's dead letters and its operation is kept a week; each retrier counts its own.
    retrier_replays_burst: int = 100
    # Replays a workspace may start per second past its burst; 0: no limit.
    retrier_replays_per_second: float = 0.1

    def replay_budget(self) -> WorkspaceBudget:
        """Return the per-workspace budget of replays these settings give."""
        return WorkspaceBudget(
            self.retrier_replays_per_second,
            self.retrier_replays_burst,
            doing="starts replays",
            rate_variable="EVENTFN_RETRIER_REPLAYS_PER_SECOND",
            burst_variable="EVENTFN_RETRIER_REPLAYS_BURST",
        )

    def policy(self) -> RetryPolicy:
        """Return the backoff policy these settings describe."""
        return RetryPolicy(
            base=timedelta(seconds=self.retry_base_seconds),
            factor=self.retry_factor,
            cap=timedelta(seconds=self.retry_cap_seconds),
            window=timedelta(seconds=self.retry_window_seconds),
            clock_skew_tolerance=timedelta(seconds=self.retry_clock_skew_tolerance_seconds),
        )
