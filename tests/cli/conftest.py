"""Run the real `eventfn` command in a subprocess against a real registry in this process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.registry.conftest import BOOTSTRAP, Registry, registry

__all__ = ["registry"]


@dataclass(frozen=True)
class Result:
    """What one CLI run printed and returned."""

    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """Return the non-empty lines of stdout and stderr."""
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]


@dataclass
class Cli:
    """The `eventfn` command with a clean environment: its own HOME, no EVENTFN_* variables.

    Calling it runs the command in this process (typer's runner, in a thread, so the
    services of the test keep serving); `process` runs it as a real subprocess.
    """

    home: Path
    cwd: Path

    def environment(self, **env: str) -> dict[str, str | None]:
        """Return the variables to set (None: unset) for one run."""
        clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EVENTFN_")}
        home = {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config")}
        return clean | home | env

    async def __call__(self, *args: str, cwd: Path | None = None, **env: str) -> Result:
        """Run `eventfn args…` in this process and return its exit code and output."""
        return await asyncio.to_thread(self._invoke, list(args), cwd or self.cwd, env)

    def _invoke(self, args: list[str], cwd: Path, env: dict[str, str]) -> Result:
        from services.cli.main import app

        before = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(app, args, env=self.environment(**env))
        finally:
            os.chdir(before)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback the user would have seen
        return Result(result.exit_code, result.stdout, result.stderr)

    async def process(self, *args: str, cwd: Path | None = None, **env: str) -> Result:
        """Run `eventfn args…` as a subprocess and return its exit code and output."""
        variables = {k: v for k, v in os.environ.items() if not k.startswith("EVENTFN_")}
        variables |= {k: v for k, v in self.environment(**env).items() if v is not None}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli.main",
            *args,
            cwd=cwd or self.cwd,
            env=variables,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, process: bool = False, **kw: Any) -> Result:
        """Run and require success."""
        result = await (self.process if process else self)(*args, **kw)
        assert result.code == 0, f"eventfn {' '.join(args)}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr
        return result

    async def fails(self, *args: str, process: bool = False, **kw: Any) -> Result:
        """Run and require a failure without a traceback."""
        result = await (self.process if process else self)(*args, **kw)
        assert result.code != 0, f"eventfn {' '.join(args)} succeeded: {result.stdout}"
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        return result


def write_context(state: Path, registry_port: int, **extra: object) -> Path:
    """Write the context file `eventfn up` would write for a registry on this port."""
    state.mkdir(parents=True, exist_ok=True)
    context = {
        "registry": f"127.0.0.1:{registry_port}",
        "addresses": {"registry": f"127.0.0.1:{registry_port}"},
        "admin_token": BOOTSTRAP,
        "token": BOOTSTRAP,
        **extra,
    }
    path = state / "cli.json"
    path.write_text(json.dumps(context))
    return path


@pytest.fixture
def project(tmp_path: Path, registry: Registry) -> Path:
    """A project directory whose `.eventfn/cli.json` points at the test registry."""
    root = tmp_path / "project"
    write_context(root / ".eventfn", registry.port)
    return root


@pytest.fixture
def cli(tmp_path: Path, project: Path) -> Cli:
    """The CLI, run from the project directory with a home of its own."""
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home=home, cwd=project)
