"""compose.yaml is valid and its NATS cluster config really forms an R3 JetStream cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.common.streams import EVENTS_STREAM, ensure_streams, events_subject
from services.devtools.embedded import nats_server_binary
from services.devtools.embedded.process import free_port, spawn, stop_process, wait_until
from tests.eventually import eventually

yaml = pytest.importorskip("yaml", reason="compose.yaml checks need PyYAML (dev dependency)")

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("registry", "router", "executor", "retrier")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return compose.yaml parsed."""
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_declares_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "nats-1", "nats-2", "nats-3", *SERVICES} <= services.keys()
    for name in SERVICES:
        service = services[name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert service["build"]["dockerfile"] == "services/Dockerfile"
        env = service["environment"]
        for key in (
            "EVENTFN_DATABASE_URL",
            "EVENTFN_NATS_URL",
            "EVENTFN_REGISTRY_ADDR",
            "EVENTFN_SERVICE_TOKEN",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ):
            assert key in env, f"{name} lacks {key}"
        assert env["EVENTFN_STREAM_REPLICAS"] == "3"
    assert "EVENTFN_SECRET_KEY" in services["registry"]["environment"]
    assert "replicas" in services["executor"]["deploy"]
    assert (REPO / "services" / "Dockerfile").exists()


def test_every_nats_node_syncs_always(compose: dict[str, Any]) -> None:
    conf = compose["configs"]["nats-conf"]["content"]
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M)
    for node in ("nats-1", "nats-2", "nats-3"):
        service = compose["services"][node]
        assert service["configs"][0]["source"] == "nats-conf"
        assert f"nats-route://{node}:6222" in conf


def _local_node_config(conf: str, node: int, ports: list[dict[str, int]], store: Path) -> str:
    """Rewrite the compose NATS config for node on loopback ports (compose unescapes `$$`)."""
    own = ports[node]
    text = conf.replace("$$", "$")
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{own['client']}")
    text = text.replace("0.0.0.0:8222", f"127.0.0.1:{own['monitor']}")
    text = text.replace("0.0.0.0:6222", f"127.0.0.1:{own['cluster']}")
    text = text.replace("store_dir: /data", f"store_dir: {json.dumps(str(store))}")
    for peer, peer_ports in enumerate(ports):
        text = text.replace(f"nats-{peer + 1}:6222", f"127.0.0.1:{peer_ports['cluster']}")
    return text


@pytest.fixture
def cluster(compose: dict[str, Any], tmp_path: Path) -> Iterator[list[dict[str, int]]]:
    """Run the compose NATS config as three local nodes; yield their ports."""
    conf = compose["configs"]["nats-conf"]["content"]
    ports = [
        {"client": free_port(), "monitor": free_port(), "cluster": free_port()} for _ in range(3)
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in range(3):
            path = tmp_path / f"nats-{node + 1}.conf"
            path.write_text(_local_node_config(conf, node, ports, tmp_path / f"store-{node + 1}"))
            env = {**os.environ, "NATS_SERVER_NAME": f"nats-{node + 1}"}
            processes.append(
                spawn(
                    [str(nats_server_binary()), "-c", str(path)],
                    log_path=tmp_path / f"nats-{node + 1}.log",
                    env=env,
                )
            )
        for node, process in enumerate(processes):
            url = f"http://127.0.0.1:{ports[node]['monitor']}/healthz?js-enabled-only=true"
            wait_until(
                lambda url=url: _http_ok(url),
                name=f"nats-{node + 1}",
                process=process,
                log_path=tmp_path / f"nats-{node + 1}.log",
                timeout=30,
            )
        # JetStream answers API calls once the nodes have elected a meta leader.
        monitors = [f"http://127.0.0.1:{p['monitor']}/jsz" for p in ports]
        wait_until(  # placing an R3 stream needs every peer caught up, not just a leader
            lambda: _meta_ready([_json(m).get("meta_cluster", {}) for m in monitors]),
            name="nats cluster",
            process=processes[0],
            log_path=tmp_path / "nats-1.log",
            timeout=30,
        )
        yield ports
    finally:
        for process in processes:
            stop_process(process, sig=signal.SIGTERM, timeout=10)


def _meta_ready(metas: list[dict[str, Any]]) -> bool:
    """Tell whether every node knows the same meta leader and the leader's peers are current.

    Only the leader lists the other peers (`replicas`), so the nodes are read together.
    """
    leaders = {m.get("leader") for m in metas}
    if len(leaders) != 1 or not next(iter(leaders)):
        return False
    return any(
        len(m.get("replicas") or []) == 2 and all(r.get("current") for r in m["replicas"])
        for m in metas
    )


def _json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return json.load(response)
    except (OSError, ValueError):
        return {}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


async def test_compose_nats_cluster_holds_r3_streams(cluster: list[dict[str, int]]) -> None:
    servers = [f"nats://127.0.0.1:{p['client']}" for p in cluster]
    nc = await nats.connect(servers=servers)
    try:
        js = nc.jetstream(timeout=10)  # ensure_streams asks again if placement stalls
        await ensure_streams(js, replicas=3)
        # A new R3 stream answers once its own group has elected a leader.
        info = await eventually(
            lambda: js.stream_info(EVENTS_STREAM),
            "a leader of the EVENTS stream",
            until=lambda info: info.cluster is not None and info.cluster.leader,
            seconds=60,
            ignoring=(NoRespondersError, NatsTimeoutError),
        )
        assert info.cluster is not None
        assert info.config.num_replicas == 3
        assert len(info.cluster.replicas or []) == 2
        ack = await js.publish(events_subject("w1", "i1"), b"[]")
        assert ack.stream == EVENTS_STREAM
    finally:
        await nc.close()
    for node in cluster:
        varz_url = f"http://127.0.0.1:{node['monitor']}/varz"
        varz = _json(varz_url)
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert varz["max_payload"] == 8 * 1024 * 1024
