"""Which SDK chunks a function's context gets: those whose global its code names.

The heavy SDKs (AWS, Stripe, Twilio, ...) are bundled one per chunk (`js/dist/sdk/<name>.js`,
listed with their trigger words in `js/dist/sdk/manifest.json`). Evaluating every chunk in
every context would cost each context tens of megabytes, so the engine evaluates only the
chunks whose words all appear as identifiers in the function's source (`AWS`; `google` and
`bigquery`), before that source runs; the SDK itself runs on the first access of its global.
A false positive (the word in a comment) costs a little load time, nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

SDK_DIR = Path(__file__).with_name("js") / "dist" / "sdk"
MANIFEST_PATH = SDK_DIR / "manifest.json"


@dataclass(frozen=True)
class SdkChunk:
    """One SDK chunk: its name and the words whose presence in a function's code load it."""

    name: str
    pattern: tuple[re.Pattern[str], ...]

    def script_name(self) -> str:
        """Return the name V8 reports for code of this chunk."""
        return f"eventfn-sdk-{self.name}.js"

    def source(self) -> str:
        """Return the chunk's script (read once per process)."""
        return chunk_source(self.name)


def _word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w$]){re.escape(word)}(?![\w$])")


@cache
def sdk_chunks() -> tuple[SdkChunk, ...]:
    """Return the chunks listed in the manifest."""
    manifest = orjson.loads(MANIFEST_PATH.read_bytes())
    return tuple(
        SdkChunk(name, tuple(_word(w) for w in entry["words"]))
        for name, entry in manifest["chunks"].items()
    )


@cache
def chunk_source(name: str) -> str:
    """Return the script of chunk `name`."""
    return (SDK_DIR / f"{name}.js").read_text(encoding="utf-8")


def chunks_named_in(code: str) -> list[SdkChunk]:
    """Return the chunks whose words all appear in `code` as identifiers."""
    return [c for c in sdk_chunks() if all(p.search(code) for p in c.pattern)]
