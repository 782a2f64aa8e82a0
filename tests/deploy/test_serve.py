"""`eventfn serve`, the image's entry point: runs one service, checks its gRPC health, and the
one-shot `init` prepares a database and the streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NatsClient

from services.common import streams
from services.devtools.embedded.process import free_port
from tests.eventually import eventually

EVENTFN = str(Path(sys.executable).with_name("eventfn"))
BOOTSTRAP = "efn_serve-bootstrap-token-0123456789"


def eventfn(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the eventfn command to its end."""
    return subprocess.run(
        [EVENTFN, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def env(fresh_database: str, nats_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a container of the image would have, on loopback ports."""
    return {
        **os.environ,
        "EVENTFN_DATABASE_URL": fresh_database,
        "EVENTFN_NATS_URL": nats_url,
        "EVENTFN_STATE_DIR": str(tmp_path / "state"),
        "EVENTFN_SERVICE_TOKEN": "svc_serve-test-token-0123456789",
        "EVENTFN_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "EVENTFN_REGISTRY_LISTEN": f"0.0.0.0:{free_port()}",
        "EVENTFN_ROUTER_LISTEN": f"127.0.0.1:{free_port()}",
        "EVENTFN_EXECUTOR_LISTEN": f"127.0.0.1:{free_port()}",
        "EVENTFN_RETRIER_LISTEN": f"127.0.0.1:{free_port()}",
    }


@pytest.fixture
def registry(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `eventfn serve registry` until the test ends."""
    with (tmp_path / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [EVENTFN, "serve", "registry"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


async def test_serve_runs_the_service_and_check_reads_its_grpc_health(
    env: dict[str, str], registry: subprocess.Popen[bytes]
) -> None:
    def checked() -> subprocess.CompletedProcess[str]:
        assert registry.poll() is None, "eventfn serve registry exited"
        return eventfn("serve", "registry", "--check", env=env)

    answer = await eventually(checked, "the registry serving", until=lambda r: r.returncode == 0)
    assert "SERVING" in answer.stdout
    # Without a name: whichever service this container runs (only the registry is up).
    anyone = eventfn("serve", "--check", env=env)
    assert anyone.returncode == 0 and anyone.stdout.startswith("registry at 127.0.0.1:")
    # A service that is not running fails the check, naming what it asked.
    router = eventfn("serve", "router", "--check", env=env)
    assert router.returncode == 1 and "UNREACHABLE" in router.stderr
    registry.send_signal(signal.SIGTERM)
    assert registry.wait(timeout=30) == 0, "SIGTERM stops the service cleanly"
    after = eventfn("serve", "--check", env=env)
    assert after.returncode == 1, after.stdout


def test_an_unknown_service_is_refused(env: dict[str, str]) -> None:
    result = eventfn("serve", "scheduler", env=env)
    assert result.returncode == 2 and "unknown service 'scheduler'" in result.stderr
    assert eventfn("serve", env=env).returncode == 2


async def test_init_migrates_registers_the_bootstrap_token_and_ensures_the_streams(
    env: dict[str, str], fresh_database: str, nats_client: NatsClient
) -> None:
    result = eventfn("serve", "init", env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "streams ensured" in result.stdout
    db = await asyncpg.connect(fresh_database)
    try:
        admins = await db.fetchval("SELECT count(*) FROM member WHERE bootstrap")
        version = await db.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await db.close()
    assert admins == 1 and version
    js = nats_client.jetstream()
    for name in (streams.EVENTS_STREAM, streams.RETRY_STREAM, streams.DEAD_STREAM):
        assert (await js.stream_info(name)).config.name == name
    # Idempotent: a second run (another pod's init container) changes nothing and succeeds.
    again = eventfn("serve", "init", env=env, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
