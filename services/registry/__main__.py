"""Run the registry: settings → telemetry → storage → servicer → server → wait for SIGTERM."""

from services.common.service import run_service
from services.registry.app import start_registry
from services.registry.settings import RegistrySettings

if __name__ == "__main__":
    run_service("eventfn-registry", RegistrySettings, start_registry)
