"""Registry settings (`EVENTFN_*` environment variables)."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.common.settings import CommonSettings
from services.common.workspace_budget import WorkspaceBudget

# EVENTFN_BOOTSTRAP_TOKEN's least length: 128 bits of hex (a guessable one is every workspace's).
MIN_BOOTSTRAP_TOKEN_CHARS = 32


class RegistrySettings(CommonSettings):
    """Everything the registry reads from its environment, validated at start."""

    database_url: str
    registry_listen: str = "127.0.0.1:50051"
    # Prometheus text on http://<this>/metrics; empty: not served.
    registry_metrics_listen: str = "127.0.0.1:9464"
    # The master key (base64 of 32 bytes) wrapping the data keys that seal encrypted values;
    # unset: generated into the state dir.
    secret_key: str | None = None
    # The master key used before EVENTFN_SECRET_KEY changed, read only: data keys it wrapped
    # are re-wrapped by the new one at start; remove it once every replica runs with both
    # and `eventfn admin rotate-secret-key` has run (docs/operations.md).
    secret_key_previous: str | None = None
    # Changes (every create, update and delete: those of sources, instances and deployed
    # functions applied by the whole data plane, each audited) a workspace may make at once;
    # each registry replica counts its own.
    registry_changes_burst: int = 300
    # Changes a workspace may make per second past its burst; 0: no limit.
    registry_changes_per_second: float = 20.0
    # Bytes all versions of a workspace's functions may take together: code, settings
    # definitions and 1 KB a version (every save keeps a version: saves in a loop grew the
    # database 23 MiB a second); 0: no limit.
    registry_code_bytes_per_workspace: int = 256 * 1024 * 1024
    # Bytes of code the versions a workspace's instances run may take together, each version
    # once (every router, executor and retrier holds each); 0: no limit.
    registry_deployed_code_bytes_per_workspace: int = 64 * 1024 * 1024
    # Instances a workspace may have (every router and executor holds each); 0: no limit.
    registry_instances_per_workspace: int = 1000
    # Sources a workspace may have (every router holds each write key); 0: no limit.
    registry_sources_per_workspace: int = 1000
    # Members a workspace may have (each is read at every call it makes); 0: no limit.
    registry_members_per_workspace: int = Field(default=1000, ge=0)
    # Tokens a member may hold that are neither revoked nor expired; 0: no limit. Revoked and
    # expired ones are listed for 30 days, then deleted.
    registry_tokens_per_member: int = Field(default=100, ge=0)
    # Days audit entries are kept (they are deleted hourly past it); 0: kept for ever.
    registry_audit_retention_days: int = Field(default=400, ge=0)
    # The bootstrap administrator's token (deployment-wide powers), registered at start;
    # unset: none. At least 32 characters, e.g. `openssl rand -hex 32`.
    bootstrap_token: str | None = None
    bootstrap_workspace: str = "default"

    @field_validator("bootstrap_token")
    @classmethod
    def _long_enough(cls, token: str | None) -> str | None:
        if not token:
            return None  # set empty: none
        if len(token) < MIN_BOOTSTRAP_TOKEN_CHARS:
            raise ValueError(
                f"EVENTFN_BOOTSTRAP_TOKEN has {len(token)} characters; it must have at least "
                f"{MIN_BOOTSTRAP_TOKEN_CHARS} (it can create workspaces and read every one): "
                "make one with `openssl rand -hex 32`"
            )
        return token

    def change_budget(self) -> WorkspaceBudget:
        """Return the per-workspace budget of configuration changes these settings give."""
        return WorkspaceBudget(
            self.registry_changes_per_second,
            self.registry_changes_burst,
            doing="makes changes",
            rate_variable="EVENTFN_REGISTRY_CHANGES_PER_SECOND",
            burst_variable="EVENTFN_REGISTRY_CHANGES_BURST",
        )
