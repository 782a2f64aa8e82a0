"""One function instance's V8 context (STPyV8) inside a worker process.

Each instance (and settings revision) gets its own context, created once and reused so its
globals persist between invocations; contexts in one worker share that worker's V8 isolate
and heap. The runtime bundle exposes its host interface only through a gate that opens for
the secret token this module arms it with before the user's script runs, so user code can
neither reach nor replace the functions the worker drives it with.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import sys
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from .model import HANDLER_NAMES
from .redact import CUT_MARGIN
from .report import MAX_REJECTION, ReportRejected
from .sdks import SdkChunk, chunks_named_in
from .v8_import import import_stpyv8

# Imported this way, never directly: V8 must be handed a valid ICU data file (v8_import.py).
STPyV8 = import_stpyv8()

# Strings longer than this cross in pieces (see FunctionContext._call).
_CHUNK = 256 * 1024
BUNDLE_PATH = Path(__file__).with_name("js") / "dist" / "runtime.js"
SCRIPT_NAME = "function.js"
# STPyV8 hands V8 a str one UTF-16 unit per character, each cut to 16 bits: a character past
# U+FFFF ('😀', U+1F600) arrived as U+F600. Written as its surrogate pair, two characters of
# the str, it arrives whole (`v8_source`).
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _surrogate_pair(match: re.Match[str]) -> str:
    point = ord(match.group()) - 0x10000
    return chr(0xD800 + (point >> 10)) + chr(0xDC00 + (point & 0x3FF))


def _may_be_astral(text: str) -> bool:
    """Tell whether `text` may hold a character past U+FFFF: CPython keeps a str with none in
    one or two bytes a character (searching took 4 ms a megabyte of accented or CJK text)."""
    return not text.isascii() and sys.getsizeof(text) >= 3 * len(text)


def v8_source(text: str) -> str:
    """Return `text` as STPyV8 must be given it for V8 to read it unchanged."""
    return _ASTRAL.sub(_surrogate_pair, text) if _may_be_astral(text) else text


# STPyV8 renders a JS exception as "Name: message ( script @ line : col )  -> source line".
_JS_ERROR = re.compile(
    r"^(?P<name>[\w$.]+): (?P<message>.*?) \( (?P<script>.*?) @ (?P<line>\d+) : (?P<col>\d+) \)"
    r"(?:  -> (?P<source>.*))?$",
    re.DOTALL,
)


@cache
def bundle_source() -> str:
    """Return the checked-in runtime bundle's source, as V8 is given it."""
    return v8_source(BUNDLE_PATH.read_text(encoding="utf-8"))


@cache
def _chunk_source(chunk: SdkChunk) -> str:
    """Return an SDK chunk's source as V8 is given it (two hold characters past U+FFFF)."""
    return v8_source(chunk.source())


def describe_js_exception(exc: BaseException) -> dict[str, object]:
    """Describe an exception STPyV8 raised for a JS error as {name, message, line, column}."""
    text = str(exc)
    m = _JS_ERROR.match(text)
    if m is None:
        return {"name": type(exc).__name__, "message": text, "line": None, "column": None}
    name = m["name"]
    if name == "JSError":
        name = "Error"
    return {
        "name": name,
        "message": m["message"],
        "line": int(m["line"]),
        "column": int(m["col"]) + 1,
        "script": m["script"],
        "source": m["source"],
    }


class ContextBroken(ReportRejected):
    """The runtime's host interface threw: user code broke the context's runtime."""


class FunctionContext:
    """A loaded function: its own V8 context holding the runtime globals and the user code.

    Every crossing is a small script evaluated in the context, calling the host interface
    through the `__eventfn__` gate with this context's secret token; values travel as JSON
    literals in that script. Nothing else crosses: STPyV8 corrupts its heap (the worker dies
    with SIGSEGV some contexts later) once a context that was handed Python objects, or whose
    functions Python called directly, is dropped.
    """

    def __init__(self, code: str) -> None:
        self.load_error: dict[str, object] | None = None
        self._host = f"__eventfn__({_js(secrets.token_hex(16))})"
        self._slots = itertools.count(1)
        # Invocation ids within this context: small and reused, so the scripts of repeated
        # crossings (poll, fire, cancel) are the same text and V8 compiles each once.
        self._free_ids: list[int] = []
        self._next_id = 1
        self._ctx = STPyV8.JSContext()
        self._ctx.enter()
        try:
            self._ctx.eval(bundle_source(), "eventfn-runtime.js")
            # The SDKs the code names register their factories (sdks.py); seed closes that.
            for chunk in chunks_named_in(code):
                self._ctx.eval(_chunk_source(chunk), chunk.script_name())
            # The first call arms the gate with the token, before any user code exists.
            self._ctx.eval(f"{self._host}.seed({_js(os.urandom(32).hex())})")
            try:
                self._ctx.eval(v8_source(code), SCRIPT_NAME)
            except Exception as exc:  # any JS error while loading the user's script
                err = describe_js_exception(exc)
                where = f" ({SCRIPT_NAME}:{err['line']}:{err['column']})" if err["line"] else ""
                self.load_error = {
                    "name": err["name"],
                    "message": f"{err['message']}{where}",
                    "stack": f"{err['name']}: {err['message']}\n    at {SCRIPT_NAME}"
                    + (f":{err['line']}:{err['column']}" if err["line"] else ""),
                    "cls": None,
                }
        finally:
            self._ctx.leave()

    def _call(self, method: str, *args: object) -> Any:
        """Call a host method in one crossing; a throw from it means user code broke it.

        A `str` argument longer than a chunk travels in pieces, a crossing each: STPyV8
        needs about ten times a script's size while it evaluates it.
        """
        spelled = [self._spell(a) if isinstance(a, str) else _js(a) for a in args]
        return self._eval(f'"use strict";{self._host}.{method}({",".join(spelled)})')

    def _spell(self, text: str) -> str:
        if len(text) <= _CHUNK:
            return _js(text)
        slot = next(self._slots)
        for i in range(0, len(text), _CHUNK):
            self._eval(f'"use strict";{self._host}.piece({slot},{_js(text[i : i + _CHUNK])})')
        return f"{self._host}.take({slot})"

    def _eval(self, script: str) -> Any:
        self._ctx.enter()
        try:
            return self._ctx.eval(v8_source(script))
        except Exception as exc:  # STPyV8 maps JS throws onto Python exception classes
            # CUT_MARGIN past the cap: the worker cuts it there once it is redacted.
            text = f"the runtime's host interface threw: {exc}"
            raise ContextBroken(text[: MAX_REJECTION + CUT_MARGIN]) from exc
        finally:
            self._ctx.leave()

    def open_invocation(self) -> int:
        """Return an id for a new invocation in this context (give it back with close)."""
        if self._free_ids:
            return self._free_ids.pop()
        self._next_id += 1
        return self._next_id - 1

    def close_invocation(self, inv_id: int) -> None:
        """Give back an invocation's id once it ended."""
        self._free_ids.append(inv_id)

    def handlers(self) -> frozenset[str]:
        """Return the handler names the code defines."""
        if self.load_error is not None:
            return frozenset()
        text = self._call("handlers")
        try:
            names = orjson.loads(text)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ContextBroken("the handler list is not JSON") from exc
        if not isinstance(names, list):
            raise ContextBroken("the handler list is not a list")
        return frozenset(n for n in names if n in HANDLER_NAMES)

    def start(
        self, inv_id: int, events: str, settings: str, batch: bool, log_cap: int, keep: bool
    ) -> str:
        """Start an invocation (every handler in this one crossing); return its first report."""
        self._call("start", inv_id, events, settings, batch, log_cap, keep)
        return self.poll(inv_id)

    def prepare(
        self, inv_id: int, events: str, settings: str, batch: bool, log_cap: int, keep: bool
    ) -> int:
        """Set an invocation up (onBatch runs); return how many handlers `run_event` starts."""
        count = self._call("prepare", inv_id, events, settings, batch, log_cap, keep)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ContextBroken("prepare did not return a count")
        return count

    def run_event(self, inv_id: int, index: int) -> None:
        """Start the handler of one event of a prepared invocation."""
        self._call("runEvent", inv_id, index)

    def poll(self, inv_id: int) -> str:
        """Return the invocation's report (pending promise jobs ran after the last crossing)."""
        return self._call("poll", inv_id)

    def resolve(self, inv_id: int, results: str) -> str:
        """Resolve a round of fetches (`results`: their JSON array) and return the next report."""
        self._call("resolve", inv_id, results)
        return self.poll(inv_id)

    def fire_timers(self, inv_id: int) -> str:
        """Run the invocation's due timers and return the next report."""
        self._call("fire", inv_id)
        return self.poll(inv_id)

    def cancel(self, inv_id: int) -> str:
        """End an invocation at its deadline: unfinished events are reported as such."""
        return self._call("cancel", inv_id)


def _js(value: object) -> str:
    """Spell a value as a JS literal (JSON is a subset of JS since ES2019).

    A string past U+FFFF (an event's emoji) is written in ASCII escapes, pairs for those
    characters, in C: `v8_source` replaced them one by one (a megabyte of emoji took 0.9 s).
    """
    if isinstance(value, str) and _may_be_astral(value):
        return json.dumps(value)
    return orjson.dumps(value).decode()
