"""Registry settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from services.common.settings import CommonSettings


class RegistrySettings(CommonSettings):
    """Everything the registry reads from its environment, validated at start."""

    database_url: str
    registry_listen: str = "127.0.0.1:50051"
    # Prometheus text on http://<this>/metrics; empty: not served.
    registry_metrics_listen: str = "127.0.0.1:9464"
    secret_key: str | None = None
    bootstrap_token: str | None = None
    bootstrap_workspace: str = "default"
