"""One function instance's V8 context (STPyV8) inside a worker process.

Each instance (and settings revision) gets its own context, created once and reused so its
globals persist between invocations; contexts in one worker share that worker's V8 isolate
and heap. The runtime bundle leaves its host interface in `globalThis.__eventfn__`; this
module takes it and deletes the global before the user's script runs, so user code can
neither reach nor replace the functions the worker drives it with.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import orjson
import STPyV8

from .model import HANDLER_NAMES
from .report import ReportRejected

BUNDLE_PATH = Path(__file__).with_name("js") / "dist" / "runtime.js"
SCRIPT_NAME = "function.js"
# STPyV8 renders a JS exception as "Name: message ( script @ line : col )  -> source line".
_JS_ERROR = re.compile(
    r"^(?P<name>[\w$.]+): (?P<message>.*?) \( (?P<script>.*?) @ (?P<line>\d+) : (?P<col>\d+) \)"
    r"(?:  -> (?P<source>.*))?$",
    re.DOTALL,
)
# Evaluated after the user's script, in its global scope: a function returning its handlers.
_LOOKUP = (
    "(() => ({"
    + ", ".join(f"{n}: typeof {n} === 'function' ? {n} : undefined" for n in HANDLER_NAMES)
    + "}))"
)


@cache
def bundle_source() -> str:
    """Return the checked-in runtime bundle's source."""
    return BUNDLE_PATH.read_text(encoding="utf-8")


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
    """A loaded function: its own V8 context holding the runtime globals and the user code."""

    def __init__(self, code: str, progress: Callable[[int], None] | None = None) -> None:
        self.load_error: dict[str, object] | None = None
        self._ctx = STPyV8.JSContext()
        self._ctx.enter()
        try:
            self._ctx.eval(bundle_source(), "eventfn-runtime.js")
            host = self._ctx.eval("__eventfn__")
            self._start = host.start
            self._poll = host.poll
            self._resolve = host.resolve
            self._fire = host.fire
            self._cancel = host.cancel
            self._handlers = host.handlers
            set_lookup = host.setLookup
            host.seed(os.urandom(32).hex())
            if progress is not None:
                host.setProgress(progress)
            self._ctx.eval("delete globalThis.__eventfn__")
            try:
                self._ctx.eval(code, SCRIPT_NAME)
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
            set_lookup(self._ctx.eval(_LOOKUP))
        finally:
            self._ctx.leave()

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        """Enter the context for one crossing; a throw from the host interface breaks it."""
        self._ctx.enter()
        try:
            yield
        except Exception as exc:  # STPyV8 maps JS throws onto Python exception classes
            raise ContextBroken(f"the runtime's host interface threw: {exc}"[:500]) from exc
        finally:
            self._ctx.leave()

    def handlers(self) -> frozenset[str]:
        """Return the handler names the code defines."""
        if self.load_error is not None:
            return frozenset()
        with self._entered():
            text = self._handlers()
        try:
            names = orjson.loads(text)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ContextBroken("the handler list is not JSON") from exc
        if not isinstance(names, list):
            raise ContextBroken("the handler list is not a list")
        return frozenset(n for n in names if n in HANDLER_NAMES)

    def start(
        self,
        inv_id: int,
        events: str,
        settings: str,
        batch: bool,
        log_cap: int,
        keep_values: bool,
    ) -> str:
        """Start an invocation and return its first report (JSON)."""
        with self._entered():
            self._start(inv_id, events, settings, batch, log_cap, keep_values)
            return self._poll(inv_id)

    def resolve(self, inv_id: int, results: str) -> str:
        """Resolve a round of fetches and return the next report."""
        with self._entered():
            self._resolve(inv_id, results)
            return self._poll(inv_id)

    def fire_timers(self, inv_id: int) -> str:
        """Run the invocation's due timers and return the next report."""
        with self._entered():
            self._fire(inv_id)
            return self._poll(inv_id)

    def cancel(self, inv_id: int) -> str:
        """End an invocation at its deadline: unfinished events are reported as such."""
        with self._entered():
            return self._cancel(inv_id)
