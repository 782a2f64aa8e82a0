"""Run the router: settings → telemetry → NATS → config watch → servers → wait for SIGTERM."""

from services.common.service import run_service
from services.router.app import start_router
from services.router.settings import RouterSettings

if __name__ == "__main__":
    run_service("eventfn-router", RouterSettings, start_router)
