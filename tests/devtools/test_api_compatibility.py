"""v1 only grows: `buf breaking` of the protos against the last released ones
(protos-released/, see "Releasing the API" in the README) is clean, and the check catches a
breaking change when one is made."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ROOT / "protos-released"


def buf() -> str:
    local = ROOT / "node_modules" / ".bin" / "buf"
    if not local.exists():
        pytest.skip("buf is not installed: `make install`")
    return str(local)


def breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [buf(), "breaking", "--against", str(RELEASED)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_protos_do_not_break_the_released_api() -> None:
    result = breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_breaking_change_is_caught(tmp_path: Path) -> None:
    for name in ("protos", "third_party"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    resources = tmp_path / "protos" / "eventfn" / "registry" / "v1" / "resources.proto"
    text = resources.read_text()
    changed = text.replace("string write_key = 3", "bytes write_key = 3")
    assert changed != text
    resources.write_text(changed)
    result = breaking(tmp_path)
    assert result.returncode != 0
    assert "write_key" in result.stdout + result.stderr
