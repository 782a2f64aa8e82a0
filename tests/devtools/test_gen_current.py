"""The checked-in gen/ is exactly what `make gen` would produce, the vendored googleapis protos
are the installed wheel's, and buf lint is clean."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from services.devtools import genprotos, vendor_googleapis


def differences(left: Path, right: Path) -> list[str]:
    """List files that differ, or exist on one side only, between two trees."""
    out: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        out.extend(f"{prefix}{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(left, right, ignore=["__pycache__"]), "")
    return out


def test_gen_is_current(tmp_path: Path) -> None:
    genprotos.generate(tmp_path)
    stale = differences(genprotos.GEN, tmp_path)
    assert not stale, f"gen/ is stale, run `make gen`: {stale}"


def test_vendored_googleapis_protos_are_the_wheels() -> None:
    stale = [
        path
        for path, text in vendor_googleapis.wheel_copies().items()
        if (vendor_googleapis.VENDORED / path).read_text() != text
    ]
    assert not stale, f"run `python -m services.devtools.vendor_googleapis`: {stale}"


def test_no_top_level_eventfn_package_is_generated() -> None:
    assert sorted(p.name for p in genprotos.GEN.iterdir()) == [genprotos.PACKAGE]


def test_buf_lint_is_clean() -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not installed")
    result = subprocess.run(
        [npx, "--no-install", "buf", "lint"],
        cwd=genprotos.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
