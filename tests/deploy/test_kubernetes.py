"""deploy/kubernetes rendered with kustomize (kubectl's) and checked: every standard resource
against the Kubernetes schemas (kubernetes-validate, strict), and what eventfn needs of them:
gRPC probes on the ports the image listens on, disruption budgets, requests as the sizing
table in docs/operations.md says, grace periods past the longest invocation, KEDA scaling
on the consumers the services really use, the official NATS chart's values as eventfn needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.common import streams
from services.executor.consumer import DURABLE as EXECUTOR_CONSUMER
from services.executor.settings import ExecutorSettings
from services.registry.settings import RegistrySettings
from services.retrier.scheduler import DURABLE as RETRIER_CONSUMER
from services.retrier.settings import RetrierSettings
from services.router.settings import RouterSettings
from tests.deploy.dockerfile import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are checked against: gRPC probes are GA since 1.27,
# the preStop `sleep` action is on by default since 1.30.
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("registry", "router", "executor", "retrier")
SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "registry": (RegistrySettings,),
    "router": (RouterSettings,),
    "executor": (ExecutorSettings,),
    "retrier": (RetrierSettings,),
    "init": (RegistrySettings, RouterSettings),  # registry + the streams (data-plane settings)
}
MAX_INVOCATION_TIMEOUT_SECONDS = 60
CUSTOM_KINDS = {"ScaledObject", "Cluster"}  # KEDA's and CloudNativePG's, checked below


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with kubectl's built-in kustomize.

    Without kubectl (it is not a Debian package; nothing here installs it), the base is
    rendered by `render_base`, which does exactly what its kustomization asks; overlays need
    kustomize itself, and their tests are skipped with that reason.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if directory == KUBERNETES / "base":
            return render_base(directory)
        pytest.skip("kubectl (its built-in kustomize renders the overlays) is not on PATH")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_base(directory: Path) -> list[dict[str, Any]]:
    """Render the base the way kustomize does: its resources, labels and image tags."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(spec) <= {"apiVersion", "kind", "labels", "resources", "images"}, (
        "the base uses more of kustomize than render_base knows; teach it or install kubectl"
    )
    docs = [
        doc
        for name in spec["resources"]
        for doc in yaml.safe_load_all((directory / name).read_text())
        if doc
    ]
    for labels in spec.get("labels", []):
        assert not labels.get("includeSelectors"), "render_base adds labels to metadata only"
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    tags = {i["name"]: i["newTag"] for i in spec.get("images", [])}
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name = container.get("image", "").split(":")[0]
            if name in tags:
                container["image"] = f"{name}:{tags[name]}"
    return docs


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Return the rendered resources of the base and of the example overlay."""
    return render(KUBERNETES / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Return the resources of a kind by name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_standard_resource_follows_the_kubernetes_schema(
    manifests: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in manifests}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "ScaledObject"} <= kinds
    for doc in manifests:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_can_fail() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replica": 2, "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def _image_env() -> dict[str, str]:
    """Return the ENV the image sets (key=value pairs of the Dockerfile's ENV lines)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _env_names(container: dict[str, Any], config: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(config["data"])
        assert source["configMapRef"]["name"] == config["metadata"]["name"]
    return names


def test_each_service_runs_its_command_probed_by_grpc_on_its_port(
    manifests: list[dict[str, Any]],
) -> None:
    deployments = by_kind(manifests, "Deployment")
    (config,) = by_kind(manifests, "ConfigMap").values()
    image = _image_env()
    for service in SERVICES:
        deployment = deployments[f"eventfn-{service}"]
        container = _container(deployment, service)
        assert container["args"] == [service]
        grpc_port = _port(image[f"EVENTFN_{service.upper()}_LISTEN"])
        metrics = _port(image[f"EVENTFN_{service.upper()}_METRICS_LISTEN"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == grpc_port and ports["metrics"] == metrics, ports
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (service, probe)
        fields = {f"EVENTFN_{f.upper()}" for cls in SETTINGS[service] for f in cls.model_fields}
        unknown = sorted(n for n in _env_names(container, config) if n.startswith("EVENTFN_"))
        unknown = [n for n in unknown if n not in fields]
        if service == "registry":
            assert "envFrom" not in container, "the registry reads no data-plane settings"
        assert not unknown, f"{service} is given variables it never reads: {unknown}"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    init = next(
        c
        for c in deployments["eventfn-registry"]["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "init"
    )
    assert init["args"] == ["init"]
    assert "EVENTFN_BOOTSTRAP_TOKEN" in _env_names(init, config)
    assert config["data"]["EVENTFN_STREAM_REPLICAS"] == "3"


def test_every_deployment_has_a_disruption_budget(manifests: list[dict[str, Any]]) -> None:
    deployments = by_kind(manifests, "Deployment")
    budgets = by_kind(manifests, "PodDisruptionBudget").values()
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{name}: {len(covering)} budgets"
        spec = covering[0]["spec"]
        assert spec.get("minAvailable", 1) >= 1 and spec.get("maxUnavailable", 1) <= 1


def _sizing_table() -> dict[str, dict[str, str]]:
    """Read the pod requests docs/operations.md states: service -> cpu, memory, limit."""
    text = (REPO / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `eventfn-(\w+)` \| `([\w.]+)` \| `(\w+)` \| `(\w+)` \|", text, re.M)
    return {name: {"cpu": c, "memory": m, "limit": limit} for name, c, m, limit in rows}


def test_requests_are_the_measured_sizes_of_the_operations_guide(
    manifests: list[dict[str, Any]],
) -> None:
    sizes = _sizing_table()
    assert set(sizes) == set(SERVICES), f"docs/operations.md sizing table: {sorted(sizes)}"
    deployments = by_kind(manifests, "Deployment")
    for service in SERVICES:
        resources = _container(deployments[f"eventfn-{service}"], service)["resources"]
        assert str(resources["requests"]["cpu"]) == sizes[service]["cpu"], service
        assert resources["requests"]["memory"] == sizes[service]["memory"], service
        assert resources["limits"]["memory"] == sizes[service]["limit"], service


def test_executors_outlive_their_longest_invocation(manifests: list[dict[str, Any]]) -> None:
    deployment = by_kind(manifests, "Deployment")["eventfn-executor"]
    container = _container(deployment, "executor")
    env = {e["name"]: e.get("value") for e in container["env"]}
    grace = float(env["EVENTFN_EXECUTOR_SHUTDOWN_GRACE_SECONDS"])
    assert grace > MAX_INVOCATION_TIMEOUT_SECONDS
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    assert "replicas" not in deployment["spec"], "KEDA owns the executors' replica count"


def test_keda_scales_executors_and_retriers_on_their_consumers(
    manifests: list[dict[str, Any]],
) -> None:
    scaled = by_kind(manifests, "ScaledObject")
    deployments = by_kind(manifests, "Deployment")
    namespace = next(
        (d["metadata"].get("namespace") for d in manifests if d["kind"] == "Deployment"), None
    )
    wanted = {
        "eventfn-executor": (streams.EVENTS_STREAM, EXECUTOR_CONSUMER),
        "eventfn-retrier": (streams.RETRY_STREAM, RETRIER_CONSUMER),
    }
    assert set(scaled) == set(wanted)
    for name, (stream, consumer) in wanted.items():
        spec = scaled[name]["spec"]
        assert scaled[name]["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"] in deployments
        assert "replicas" not in deployments[spec["scaleTargetRef"]["name"]]["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        metadata = trigger["metadata"]
        allowed = {
            "natsServerMonitoringEndpoint",
            "account",
            "stream",
            "consumer",
            "lagThreshold",
            "activationLagThreshold",
            "useHttps",
        }
        assert set(metadata) <= allowed, set(metadata) - allowed
        assert (metadata["stream"], metadata["consumer"]) == (stream, consumer)
        assert metadata["account"] == "$G"
        assert int(metadata["lagThreshold"]) > 0
        # The official chart's headless service of release `nats`, where KEDA finds each
        # node's monitoring port.
        host, port = metadata["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert port == "8222" and host.startswith("nats-headless.")
        if namespace:
            assert host == f"nats-headless.{namespace}.svc.cluster.local"
    (config,) = by_kind(manifests, "ConfigMap").values()
    assert "EVENTFN_NATS_URL" not in config["data"]  # it holds NATS's password: the secret's


def test_every_service_reaching_nats_signs_in_with_the_secrets_url() -> None:
    """NATS asks for a password (deploy/kubernetes/nats/values.yaml): every container that
    reaches it takes EVENTFN_NATS_URL, with it, from the secret."""
    docs = render(KUBERNETES / "base")
    reaching = set()
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            for env in container.get("env", []):
                if env["name"] == "EVENTFN_NATS_URL":
                    assert env["valueFrom"]["secretKeyRef"]["key"] == "nats-url"
                    reaching.add(container["name"])
    assert reaching == {"init", "router", "executor", "retrier"}
    values = yaml.safe_load((KUBERNETES / "nats" / "values.yaml").read_text())
    assert values["config"]["merge"]["authorization"]["user"] == "eventfn"
    password = values["container"]["env"]["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "eventfn", "key": "nats-password"}


def test_the_example_takes_postgresql_from_cloudnative_pg() -> None:
    docs = render(KUBERNETES / "overlays" / "example")
    (cluster,) = by_kind(docs, "Cluster").values()
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] >= 3
    app_secret = f"{cluster['metadata']['name']}-app"
    for deployment in by_kind(docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            for env in container.get("env", []):
                if env["name"] == "EVENTFN_DATABASE_URL":
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (app_secret, "uri"), container["name"]
    (secret,) = by_kind(docs, "Secret").values()
    keys = set(secret["data"])
    assert {"service-token", "bootstrap-token", "secret-key"} <= keys


def test_nats_chart_values_give_eventfn_what_it_needs() -> None:
    values = yaml.safe_load((KUBERNETES / "nats" / "values.yaml").read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    jetstream = config["jetstream"]
    assert jetstream["enabled"] and jetstream["fileStore"]["enabled"]
    assert jetstream["fileStore"]["pvc"]["enabled"]
    assert jetstream["merge"]["sync_interval"] == "always"
    assert config["monitor"] == {"enabled": True, "port": 8222}
    assert config["merge"]["max_payload"] == "<< 8MB >>"
    assert values["podDisruptionBudget"]["enabled"]


def test_the_fallback_renders_the_base_as_kustomize_does() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: nothing to compare the fallback with")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(render_base(KUBERNETES / "base"), key=key) == sorted(
        render(KUBERNETES / "base"), key=key
    )
