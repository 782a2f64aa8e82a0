"""compose.yaml follows the Compose specification, documents every variable, gives each service
only variables it reads, and its NATS cluster config really forms an R3 JetStream cluster."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import nats
import nats.errors
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic_settings import BaseSettings

from services.common.settings import DataPlaneSettings
from services.common.streams import EVENTS_STREAM, ensure_streams, events_subject
from services.devtools.embedded import nats_server_binary
from services.devtools.embedded.process import free_port, spawn, stop_process, wait_until
from services.executor.settings import ExecutorSettings
from services.registry.settings import RegistrySettings
from services.retrier.settings import RetrierSettings
from services.router.settings import RouterSettings
from tests.eventually import eventually

yaml = pytest.importorskip("yaml", reason="compose.yaml checks need PyYAML (dev dependency)")

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("registry", "router", "executor", "retrier")
SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "registry": (RegistrySettings,),
    "router": (RouterSettings,),
    "executor": (ExecutorSettings,),
    "retrier": (RetrierSettings,),
    # init runs the registry once and ensures the streams (services/cli/serve.py)
    "init": (RegistrySettings, DataPlaneSettings),
}
MAX_INVOCATION_TIMEOUT_SECONDS = 60  # TIMEOUT_MAX_MS of an instance (registry validation)
INTERPOLATION = re.compile(r"\$\{(\w+)(?:[:?-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return compose.yaml parsed."""
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def compose_schema() -> dict[str, Any]:
    """Return the Compose specification's JSON schema (vendored by check-jsonschema)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema is strict about unknown keys: a typo is caught, not ignored.
    typo = {**compose, "services": {**compose["services"], "router": {"replica": 2}}}
    assert list(validator.iter_errors(typo))


def test_every_variable_of_the_compose_file_is_documented_in_its_header() -> None:
    text = (REPO / "compose.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    used = set(INTERPOLATION.findall(body))
    assert {"EVENTFN_POSTGRES_PASSWORD", "EVENTFN_SERVICE_TOKEN"} <= used
    undocumented = sorted(v for v in used if not re.search(rf"^#\s+{v}\b|\b{v},", header, re.M))
    assert not undocumented, f"compose.yaml uses, but its header does not explain: {undocumented}"
    listed = set(re.findall(r"^#\s{2,}([A-Z][A-Z0-9_]+)\b", header, re.M))
    assert not listed - used, f"documented, but not used: {sorted(listed - used)}"


def test_every_eventfn_variable_given_to_a_service_is_one_it_reads(compose: dict[str, Any]) -> None:
    for name, classes in SETTINGS.items():
        fields = {f"EVENTFN_{f.upper()}" for cls in classes for f in cls.model_fields}
        env = compose["services"][name]["environment"]
        unknown = sorted(k for k in env if k.startswith("EVENTFN_") and k not in fields)
        assert not unknown, f"{name} is given variables it never reads: {unknown}"


def test_compose_declares_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "nats-1", "nats-2", "nats-3", "init", *SERVICES} <= services.keys()
    for name in (*SERVICES, "init"):
        service = services[name]
        assert service["command"] == [name]
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (REPO / service["build"]["context"] / "Dockerfile").exists()
        env = service["environment"]
        for key in ("EVENTFN_SERVICE_TOKEN", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            assert key in env, f"{name} lacks {key}"
        if name != "retrier":
            assert "postgres:5432" in env["EVENTFN_DATABASE_URL"], name
        if name != "registry":
            assert env["EVENTFN_STREAM_REPLICAS"] == "3"
            assert env["EVENTFN_NATS_URL"].count("nats://") == 3
            assert env["EVENTFN_REGISTRY_ADDR"] == "registry:50051"
    for name in SERVICES:
        check = services[name]["healthcheck"]["test"]
        assert check == ["CMD", "eventfn", "serve", name, "--check"], check
        needs = services[name]["depends_on"]
        assert needs["init"]["condition"] == "service_completed_successfully", name
    for name in ("router", "executor", "retrier"):
        assert services[name]["depends_on"]["registry"]["condition"] == "service_healthy"
    assert services["init"]["healthcheck"] == {"disable": True}
    assert "EVENTFN_BOOTSTRAP_TOKEN" in services["init"]["environment"]
    assert "EVENTFN_SECRET_KEY" in services["registry"]["environment"]
    assert services["router"]["deploy"]["replicas"] == 2
    assert "EVENTFN_EXECUTOR_REPLICAS" in str(services["executor"]["deploy"]["replicas"])
    assert "ports" not in services["executor"], "executors scale: no fixed host port"


def _seconds(duration: str) -> float:
    """Read a Compose duration such as `90s` or `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_executors_stop_after_their_invocations_end(compose: dict[str, Any]) -> None:
    executor = compose["services"]["executor"]
    grace = float(executor["environment"]["EVENTFN_EXECUTOR_SHUTDOWN_GRACE_SECONDS"])
    assert grace > MAX_INVOCATION_TIMEOUT_SECONDS
    assert _seconds(executor["stop_grace_period"]) > grace


def test_observability_profile_is_wired_to_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("otel-collector", "jaeger", "prometheus"):
        assert services[name]["profiles"] == ["observability"], name
    collector = yaml.safe_load(compose["configs"]["otel-collector-conf"]["content"])
    assert collector["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    prometheus = yaml.safe_load(compose["configs"]["prometheus-conf"]["content"])
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    dockerfile = (REPO / "Dockerfile").read_text()
    for name in SERVICES:
        (sd,) = jobs[f"eventfn-{name}"]["dns_sd_configs"]
        assert sd["names"] == [name]
        # The port each service's /metrics listens on in the image.
        assert f"EVENTFN_{name.upper()}_METRICS_LISTEN=0.0.0.0:{sd['port']}" in dockerfile, name


def test_every_nats_node_syncs_always(compose: dict[str, Any]) -> None:
    conf = compose["configs"]["nats-conf"]["content"]
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M)
    for node in ("nats-1", "nats-2", "nats-3"):
        service = compose["services"][node]
        assert service["configs"][0]["source"] == "nats-conf"
        assert f"nats-route://{node}:6222" in conf


# What compose gives the NATS nodes as EVENTFN_NATS_PASSWORD, here.
PASSWORD = "compose-test-password"


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
            env = {**os.environ, "NATS_SERVER_NAME": f"nats-{node + 1}", "NATS_PASSWORD": PASSWORD}
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
    servers = [f"nats://eventfn:{PASSWORD}@127.0.0.1:{p['client']}" for p in cluster]
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


def test_the_nats_image_is_the_server_version_the_tests_run(compose: dict[str, Any]) -> None:
    out = subprocess.run(
        [str(nats_server_binary()), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.\d+", out)
    assert found, out
    tested = f"{found.group(1)}.{found.group(2)}"
    for node in ("nats-1", "nats-2", "nats-3"):
        image = compose["services"][node]["image"]
        assert image.startswith(f"nats:{tested}"), f"{node} runs {image}; the tests run {tested}"


def test_only_the_routers_http_port_is_published_beyond_loopback(
    compose: dict[str, Any],
) -> None:
    """The security checklist: only the router's HTTP port is public. Compose published the
    registry's and the retrier's gRPC (and Jaeger's and Prometheus's UIs) on every interface."""
    services = compose["services"]
    public = {
        name
        for name, service in services.items()
        for port in service.get("ports", [])
        if not str(port).startswith("127.0.0.1:")
    }
    assert public == {"router"}


async def test_compose_nats_refuses_clients_without_the_password(
    cluster: list[dict[str, int]],
) -> None:
    """The compose NATS took anonymous clients: anything on its network read, forged and
    purged every tenant's events."""
    for userinfo in ("", "eventfn:guess@"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                f"nats://{userinfo}127.0.0.1:{cluster[0]['client']}",
                allow_reconnect=False,
                connect_timeout=2,
            )
