"""Run an executor process: settings → telemetry → NATS/DB → pool → consumer → server."""

from services.common.service import run_service
from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings

if __name__ == "__main__":
    run_service("eventfn-executor", ExecutorSettings, start_executor)
