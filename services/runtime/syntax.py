"""Check a function's JavaScript for syntax errors without running it (in-process, fast)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from functools import cache

from .engine import SCRIPT_NAME, describe_js_exception, v8_source
from .model import SyntaxProblem


class _Compiler:
    """A thread that owns a V8 context used only to compile (never run) scripts.

    STPyV8 objects must stay on the thread that created them (using them from another thread
    crashes the process), so callers on any thread hand their code to this one.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, Future[SyntaxProblem | None]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="eventfn-syntax", daemon=True).start()

    def _serve(self) -> None:
        from .engine import STPyV8  # initialised with its ICU data (v8_import.py)

        isolate = STPyV8.JSIsolate()  # this thread's own isolate: V8 isolates are per thread
        isolate.enter()
        ctx = STPyV8.JSContext()
        ctx.enter()
        engine = STPyV8.JSEngine()
        while True:
            code, result = self._jobs.get()
            try:
                engine.compile(v8_source(code), SCRIPT_NAME)
            except Exception as exc:  # V8 reports syntax errors as various exception types
                err = describe_js_exception(exc)
                line, column = err["line"], err["column"]
                result.set_result(
                    SyntaxProblem(
                        line=line if isinstance(line, int) else 1,
                        column=column if isinstance(column, int) else 1,
                        message=f"{err['name']}: {err['message']}",
                    )
                )
            else:
                result.set_result(None)

    def check(self, code: str) -> SyntaxProblem | None:
        result: Future[SyntaxProblem | None] = Future()
        self._jobs.put((code, result))
        return result.result()


@cache
def _compiler() -> _Compiler:
    return _Compiler()


def check_syntax(code: str) -> SyntaxProblem | None:
    """Return where and why `code` is not a valid classic script, or None when it parses."""
    return _compiler().check(code)
