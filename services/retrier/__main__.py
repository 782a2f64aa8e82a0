"""Run a retrier process: settings → telemetry → NATS → scheduler → server."""

from services.common.service import run_service
from services.retrier.app import start_retrier
from services.retrier.settings import RetrierSettings

if __name__ == "__main__":
    run_service("eventfn-retrier", RetrierSettings, start_retrier)
