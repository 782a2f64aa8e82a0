"""The embedded launchers start real servers that keep data and refuse to share a data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.devtools.embedded import (
    DataDirInUseError,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    ServerStartError,
)
from services.devtools.embedded.nats import render_config, varz_problem
from services.devtools.embedded.process import free_port
from tests.eventually import eventually

REPO = Path(__file__).resolve().parents[2]


async def _scalar(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# --- PostgreSQL ---------------------------------------------------------------------------


async def test_session_postgres_serves_the_eventfn_database(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://postgres:")
    assert "@127.0.0.1:" in postgres_url
    assert postgres_url.endswith("/eventfn")
    assert await _scalar(postgres_url, "SELECT current_database()") == "eventfn"


async def test_fresh_database_is_empty_and_separate(fresh_database: str, postgres_url: str) -> None:
    assert fresh_database != postgres_url
    tables = await _scalar(
        fresh_database,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    assert tables == 0


async def test_postgres_row_survives_restart(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "pg") as pg:
        first_url = pg.url
        conn = await asyncpg.connect(pg.url)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        await conn.close()
    assert not pg.running
    async with EmbeddedPostgres(tmp_path / "pg") as pg:
        # The last port is reused when free, so URLs stay stable across restarts.
        assert pg.url == first_url
        assert await _scalar(pg.url, "SELECT v FROM kept") == "hello"


def test_postgres_second_launcher_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        with pytest.raises(DataDirInUseError) as info:
            EmbeddedPostgres(tmp_path / "pg").start()
        assert info.value.owner_pid == os.getpid()
        assert str(tmp_path / "pg") in str(info.value)
        # The refused launcher must not have disturbed the running one.
        assert pg.running


def test_postgres_recovers_from_stale_pid_file(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg"):
        pass
    # A pid file naming a live process that is not postgres (ourselves): postgres alone
    # would refuse to start, believing another postmaster runs.
    pid_file = tmp_path / "pg" / "pgdata" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n{tmp_path / 'pg' / 'pgdata'}\n0\n5432\n\n\n\nready\n")
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert pg.running


def _orphan_script(kind: str, data_dir: Path, stop_with_parent: bool = False) -> str:
    """Return a script that starts a server, prints its pid and dies without stopping it."""
    return textwrap.dedent(
        f"""
        import json, os
        from pathlib import Path
        from services.devtools.embedded import {kind}
        server = {kind}(Path({str(data_dir)!r}), stop_with_parent={stop_with_parent})
        server.start()
        print(json.dumps({{"pid": server._process.pid, "url": server.url}}), flush=True)
        os._exit(0)
        """
    )


def _start_orphan(kind: str, data_dir: Path, stop_with_parent: bool = False) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"}
    out = subprocess.run(
        [sys.executable, "-c", _orphan_script(kind, data_dir, stop_with_parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


async def test_postgres_stops_a_leftover_of_a_dead_launcher(tmp_path: Path) -> None:
    orphan = _start_orphan("EmbeddedPostgres", tmp_path / "pg")
    leftover = psutil.Process(int(orphan["pid"]))  # type: ignore[arg-type]
    assert _alive(leftover.pid)
    conn = await asyncpg.connect(str(orphan["url"]))
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
    await conn.close()
    async with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert not _alive(leftover.pid)
        assert await _scalar(pg.url, "SELECT v FROM kept") == 7


def test_postgres_start_failure_names_the_log(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", options={"no_such_setting": "1"}, start_timeout=30)
    with pytest.raises(ServerStartError) as info:
        pg.start()
    assert str(pg.log_path) in str(info.value)
    assert "no_such_setting" in str(info.value)
    assert not pg.running


def test_postgres_never_wipes_a_non_cluster_pgdata(tmp_path: Path) -> None:
    keep = tmp_path / "pg" / "pgdata" / "precious.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    with pytest.raises(EmbeddedServerError, match="no PG_VERSION"):
        EmbeddedPostgres(tmp_path / "pg").start()
    assert keep.read_text() == "mine"


def test_postgres_configured_port_is_used(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedPostgres(tmp_path / "pg", port=port) as pg:
        assert pg.port == port
        assert f":{port}/" in pg.url


@pytest.mark.skipif(os.geteuid() != 0, reason="only root must switch to the system user")
def test_postgres_runs_unprivileged_when_root(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as pg:
        assert pg._process is not None
        assert psutil.Process(pg._process.pid).uids().effective != 0


# --- NATS ---------------------------------------------------------------------------------


def test_session_nats_has_jetstream_with_sync_always(nats_server: EmbeddedNats) -> None:
    varz = nats_server.monitor("varz")
    assert varz["jetstream"]["config"]["sync_always"] is True
    assert varz["max_payload"] == 8 * 1024 * 1024
    assert varz["host"] == "127.0.0.1"
    # Half the cores: it shares the machine with the platform's processes.
    assert varz["gomaxprocs"] == max(1, (os.cpu_count() or 2) // 2)


async def test_nats_message_survives_restart(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats") as server:
        first_url = server.url
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        ack = await js.publish("kept.one", b"payload")
        await nc.close()
    assert not server.running
    async with EmbeddedNats(tmp_path / "nats") as server:
        assert server.url == first_url
        nc = await nats.connect(server.url)
        msg = await nc.jetstream().get_msg("KEPT", ack.seq)
        await nc.close()
        assert msg.data == b"payload"


def test_nats_second_launcher_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "nats") as server:
        with pytest.raises(DataDirInUseError, match="in use by process"):
            EmbeddedNats(tmp_path / "nats").start()
        assert server.running


def test_nats_stops_a_leftover_of_a_dead_launcher(tmp_path: Path) -> None:
    orphan = _start_orphan("EmbeddedNats", tmp_path / "nats")
    leftover = psutil.Process(int(orphan["pid"]))  # type: ignore[arg-type]
    with EmbeddedNats(tmp_path / "nats") as server:
        assert not _alive(leftover.pid)
        assert server.monitor("jsz")["config"]["sync_always"] is True


def test_nats_port_taken_by_someone_else_fails_clearly(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "first") as first:
        clash = EmbeddedNats(tmp_path / "second", port=first.port, start_timeout=30)
        with pytest.raises(ServerStartError, match="nats-server failed to start") as info:
            clash.start()
        assert str(clash.log_path) in str(info.value)
        assert not clash.running


def test_stop_is_idempotent_and_kills_a_stuck_server(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", stop_timeout=0.5)
    server.start()
    assert server._process is not None
    process = server._process
    # A server that ignores the polite signal is killed after stop_timeout.
    os.kill(process.pid, signal.SIGSTOP)
    server.stop()
    server.stop()
    assert process.returncode == -signal.SIGKILL
    assert not server.running


@given(
    port=st.integers(1, 65535),
    monitor=st.integers(1, 65535),
    payload=st.integers(1, 64 * 1024 * 1024),
    store=st.text(min_size=1).filter(lambda s: "\x00" not in s),
)
def test_render_config_always_syncs_and_quotes_paths(
    port: int, monitor: int, payload: int, store: str
) -> None:
    text = render_config(
        port=port,
        monitor_port=monitor,
        store_dir=Path("/state") / store,
        pid_file=Path("/state/pid"),
        max_payload=payload,
        server_name="eventfn",
        password="pw-0123",
    )
    assert "  sync_interval: always\n" in text
    assert 'authorization { user: "eventfn", password: "pw-0123" }' in text
    assert f'listen: "127.0.0.1:{port}"' in text
    assert f"max_payload: {payload}\n" in text
    assert f"store_dir: {json.dumps(str(Path('/state') / store))}" in text


async def test_postgres_recovers_after_sigkill(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.start()
    conn = await asyncpg.connect(pg.url)
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")
    await conn.close()
    assert pg._process is not None
    pg._process.kill()  # no shutdown checkpoint: the next start must run crash recovery
    pg._process.wait()
    pg.stop()
    async with EmbeddedPostgres(tmp_path / "pg") as again:
        assert await _scalar(again.url, "SELECT v FROM kept") == 1


async def test_nats_acked_message_survives_sigkill(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="KEPT", subjects=["kept.>"])
    ack = await js.publish("kept.one", b"payload")
    await nc.close()
    assert server._process is not None
    server._process.kill()
    server._process.wait()
    server.stop()
    async with EmbeddedNats(tmp_path / "nats") as again:
        nc = await nats.connect(again.url)
        msg = await nc.jetstream().get_msg("KEPT", ack.seq)
        await nc.close()
        assert msg.data == b"payload"


async def test_each_test_database_is_new_and_empty(
    module_database: str, fresh_database: str
) -> None:
    # Tests of one module share `module_database`; a fresh one sees nothing of it, so no
    # test depends on what another wrote, whatever the order they run in.
    await _scalar(module_database, "CREATE TABLE IF NOT EXISTS mine (v int)")
    assert fresh_database != module_database
    assert await _scalar(fresh_database, "SELECT to_regclass('mine') IS NULL") is True


@pytest.mark.parametrize("kind", ["EmbeddedPostgres", "EmbeddedNats"])
async def test_stop_with_parent_stops_the_server_when_its_launcher_dies(
    kind: str, tmp_path: Path
) -> None:
    orphan = _start_orphan(kind, tmp_path / "server", stop_with_parent=True)
    pid = int(orphan["pid"])  # type: ignore[arg-type]
    await eventually(lambda: not _alive(pid), f"{kind} (pid {pid}) to stop with its launcher")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


FIT_VARZ = {"max_payload": 8, "jetstream": {"config": {"sync_always": True}}}


@pytest.mark.parametrize(
    ("varz", "problem"),
    [
        (FIT_VARZ, None),
        ({"max_payload": 8, "jetstream": {"config": {}}}, "JetStream is not enabled"),
        ({"max_payload": 8}, "JetStream is not enabled"),
        ({"max_payload": 8, "jetstream": {"config": {"sync_always": False}}}, "sync_interval"),
        ({"max_payload": 8, "jetstream": {"config": {"store_dir": "/x"}}}, None),
        ({"max_payload": 1, "jetstream": {"config": {"sync_always": True}}}, "max_payload"),
    ],
)
def test_varz_problem(varz: dict[str, object], problem: str | None) -> None:
    found = varz_problem(varz, max_payload=8)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
