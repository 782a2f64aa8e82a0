"""The checked-in JS bundle is built from the current lock file; syntax checking."""

from __future__ import annotations

import hashlib
import re

import orjson

from services.runtime.engine import BUNDLE_PATH
from services.runtime.sdks import MANIFEST_PATH, SDK_DIR
from services.runtime.syntax import check_syntax

LOCK_PATH = BUNDLE_PATH.parents[1] / "package-lock.json"
SRC_DIR = BUNDLE_PATH.parents[1] / "src"
REBUILD = "run `npm ci && npm run build` in services/runtime/js and commit the bundle"


def test_bundle_was_rebuilt_after_the_lock_file_changed() -> None:
    header = BUNDLE_PATH.read_text(encoding="utf-8")[:300]
    match = re.search(r"package-lock.json sha256: ([0-9a-f]{64})", header)
    assert match is not None, "dist/runtime.js has no lock header: rebuild with npm run build"
    current = hashlib.sha256(LOCK_PATH.read_bytes()).hexdigest()
    assert match.group(1) == current, (
        "package-lock.json changed but dist/runtime.js was not rebuilt: run "
        + REBUILD.removeprefix("run ")
    )


def test_bundle_was_rebuilt_after_the_sources_changed() -> None:
    header = BUNDLE_PATH.read_text(encoding="utf-8")[:400]
    match = re.search(r"src sha256: ([0-9a-f]{64})", header)
    assert match is not None, f"dist/runtime.js has no source header: {REBUILD}"
    digest = hashlib.sha256()
    sources = [p for p in SRC_DIR.rglob("*") if p.suffix in (".js", ".json")]
    for path in sorted(sources, key=lambda p: str(p.relative_to(SRC_DIR))):
        name = str(path.relative_to(SRC_DIR))
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    assert match.group(1) == digest.hexdigest(), f"js/src changed since the last build: {REBUILD}"


def test_sdk_chunks_were_built_with_the_bundle() -> None:
    manifest = orjson.loads(MANIFEST_PATH.read_bytes())
    header = BUNDLE_PATH.read_text(encoding="utf-8")[:400]
    assert f"package-lock.json sha256: {manifest['lock_sha256']}" in header, REBUILD
    assert f"src sha256: {manifest['src_sha256']}" in header, REBUILD
    built = {p.stem for p in SDK_DIR.glob("*.js")}
    assert built == set(manifest["chunks"]), REBUILD
    for name, chunk in manifest["chunks"].items():
        text = (SDK_DIR / f"{name}.js").read_bytes()
        assert hashlib.sha256(text).hexdigest() == chunk["sha256"], f"dist/sdk/{name}.js: {REBUILD}"


def test_check_syntax_accepts_a_valid_classic_script() -> None:
    code = "var x = 1\nasync function onTrack(event, settings) { undeclared = x }"
    assert check_syntax(code) is None


def test_check_syntax_reports_line_and_column() -> None:
    problem = check_syntax("async function onTrack(event) {\n  const = 1\n}")
    assert problem is not None
    assert (problem.line, problem.column) == (2, 9)
    assert problem.message.startswith("SyntaxError: ")


def test_check_syntax_rejects_module_syntax() -> None:
    problem = check_syntax("import x from 'y'\nasync function onTrack() {}")
    assert problem is not None and problem.line == 1


def test_check_syntax_from_other_threads() -> None:
    # STPyV8 objects crash when used off their thread; the checker must hand work over.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as threads:
        problems = list(threads.map(check_syntax, ["a b", "function f() {}"] * 8))
    assert [p is None for p in problems] == [False, True] * 8
