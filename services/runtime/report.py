"""The report a function's context returns to the worker, typed and checked (sans-IO).

The JS side (`js/src/runtime.js`, `Invocation.report`; `js/src/fetch.js` and Node's
`http`/`https` in `js/src/node/http.js`, which SDKs use, for the requests) produces, as JSON:

    {"done": bool,             -- every event has an outcome (or the invocation was cancelled)
     "fetches": [FetchRequest], -- requests queued since the last report
     "timer": number,          -- ms until the next timer is due, -1 for none
     -- when done:
     "results": [0 | 2 | {name, message, stack, cls}],  -- per event (one for onBatch):
                                -- 0 finished, 2 unfinished, an error object when it threw
     "values": [any],          -- handler return values (previews only)
     "batchValue": any,        -- what onBatch returned (absent when it returned nothing)
     "logs": [[level, line]], "logsDropped": int,
     "logCut": true}           -- the last line was cut (absent when it was not)

    FetchRequest = {"id": int, "url": str, "method": str, "headers": [[name, value]],
                    "body": null | {"text": str} | {"base64": str},
                    "redirect": "follow" | "manual" | "error", "follow": int,
                    "timeout": number (ms, 0 none), "size": int (bytes, 0 none)}

User code runs in the same context and may have replaced any intrinsic the JS side uses, so
nothing here is trusted: every field is type-checked, every size capped, and the number of
results must be the invocation's. A report that breaks the shape is rejected whole
(`ReportRejected`); oversized but well-formed parts are cut to their caps.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from .outcomes import DISCARD_ERRORS, MAX_ERROR_MESSAGE, RETRY_ERRORS, cut_text
from .redact import CUT_MARGIN

MAX_REPORT_CHARS = 32 * 1024 * 1024
MAX_FETCHES_PER_INVOCATION = 10_000
MAX_URL_CHARS = 64 * 1024
# An invocation's request traces (up to MAX_FETCHES_PER_INVOCATION): each URL and error is
# kept to TRACE_TEXT_CHARS, and only the last DETAILED_TRACES keep bodies and headers (1,000
# refused fetches of 64 KB URLs made 125 MB of traces, each quoting its URL twice).
TRACE_TEXT_CHARS = 2048
DETAILED_TRACES = 100
MAX_METHOD_CHARS = 32
MAX_HEADERS = 500
MAX_HEADER_CHARS = 256 * 1024
MAX_ERROR_NAME = 256
MAX_ERROR_STACK = 16 * 1024
MAX_REJECTION = 500  # characters of why a context's report was rejected
# Levels of a value a handler returns that are kept (deeper ones become TOO_DEEP): what is
# kept must still encode, inside the worker's reply and the executor's traces, and orjson
# writes at most 254 levels (an onBatch value 300 deep left its invocation unanswered).
MAX_VALUE_DEPTH = 64
TOO_DEEP = f"[nested deeper than {MAX_VALUE_DEPTH} levels]"
LOG_LEVELS = frozenset({"log", "info", "warn", "error", "debug", "trace"})
REDIRECT_MODES = frozenset({"follow", "manual", "error"})
FINISHED, UNFINISHED = 0, 2
KNOWN_CLASSES = RETRY_ERRORS | DISCARD_ERRORS
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\0]")
ABSENT: Any = object()


class ReportRejected(Exception):
    """A context's report does not have the runtime's shape: the context is not trusted."""


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One request a function queued with fetch(), checked."""

    id: int
    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    redirect: str
    follow: int
    timeout_ms: float
    size: int
    # Set when the request itself is unacceptable: answered with this error, never sent.
    problem: str | None = None


@dataclass(slots=True)
class Report:
    """One report of a context, checked."""

    done: bool
    fetches: list[FetchRequest]
    timer_ms: float
    results: list[int | dict[str, Any]] = field(default_factory=list)
    values: list[Any] | None = None
    batch_value: Any = ABSENT
    logs: list[tuple[str, str]] = field(default_factory=list)
    logs_dropped: int = 0
    # The last log line was cut, CUT_MARGIN or more past its room: `redact_cut(cut_before=)`.
    last_log_cut: bool = False


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ReportRejected(what)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _error(raw: dict[str, Any]) -> dict[str, Any]:
    # Cut CUT_MARGIN past the caps: the worker cuts to them once the texts are redacted.
    for key in ("name", "message", "stack"):
        _need(isinstance(raw.get(key, ""), str), f"error {key} is not a string")
    cls = raw.get("cls")
    return {
        "name": cut_text(raw.get("name") or "Error", MAX_ERROR_NAME + CUT_MARGIN),
        "message": cut_text(raw.get("message", ""), MAX_ERROR_MESSAGE + CUT_MARGIN),
        "stack": cut_text(raw.get("stack", ""), MAX_ERROR_STACK + CUT_MARGIN),
        "cls": cls if cls in KNOWN_CLASSES else None,
    }


def bounded(value: Any, depth: int = 0) -> Any:
    """Return a returned value with what is nested deeper than MAX_VALUE_DEPTH as TOO_DEEP."""
    if isinstance(value, list):
        return TOO_DEEP if depth == MAX_VALUE_DEPTH else [bounded(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if depth == MAX_VALUE_DEPTH:
            return TOO_DEEP
        return {k: bounded(v, depth + 1) for k, v in value.items()}
    return value


def _body(raw: object, max_bytes: int) -> tuple[bytes | None, str | None]:
    if raw is None:
        return None, None
    _need(isinstance(raw, dict), "fetch body is not an object")
    assert isinstance(raw, dict)
    if "text" in raw:
        _need(isinstance(raw["text"], str), "fetch text body is not a string")
        data = raw["text"].encode("utf-8", "surrogatepass")
    else:
        _need(isinstance(raw.get("base64"), str), "fetch body has neither text nor base64")
        try:
            data = base64.b64decode(raw["base64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ReportRejected("fetch body is not base64") from exc
    if len(data) > max_bytes:
        return None, (
            f"request body is {len(data)} bytes; eventfn sends at most "
            f"{max_bytes // (1024 * 1024)} MB per request"
        )
    return data, None


def _fetch(raw: object, max_body: int) -> FetchRequest:
    _need(isinstance(raw, dict), "fetch request is not an object")
    assert isinstance(raw, dict)
    rid, url, method, headers = raw.get("id"), raw.get("url"), raw.get("method"), raw.get("headers")
    _need(_is_int(rid), "fetch id is not an integer")
    _need(isinstance(url, str) and isinstance(method, str), "fetch url/method not strings")
    _need(isinstance(headers, list), "fetch headers are not a list")
    assert isinstance(url, str) and isinstance(method, str) and isinstance(headers, list)
    redirect, follow = raw.get("redirect", "follow"), raw.get("follow", 20)
    timeout, size = raw.get("timeout", 0), raw.get("size", 0)
    _need(redirect in REDIRECT_MODES, "fetch redirect mode is unknown")
    _need(_is_int(follow) and _is_int(size), "fetch follow/size not integers")
    _need(_is_number(timeout), "fetch timeout is not a number")
    pairs: list[tuple[str, str]] = []
    for pair in headers:
        _need(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair),
            "fetch header is not a [name, value] pair of strings",
        )
        pairs.append((pair[0], pair[1]))
    body, problem = _body(raw.get("body"), max_body)
    if problem is None:
        problem = _request_problem(url, method, pairs)
    return FetchRequest(
        id=rid,  # type: ignore[arg-type]
        url=url,
        method=method,
        headers=tuple(pairs),
        body=body,
        redirect=str(redirect),
        follow=max(0, int(follow)),  # type: ignore[arg-type]
        timeout_ms=max(0.0, float(timeout)),  # type: ignore[arg-type]
        size=max(0, int(size)),  # type: ignore[arg-type]
        problem=problem,
    )


def _request_problem(url: str, method: str, headers: list[tuple[str, str]]) -> str | None:
    """Say what makes a well-formed request unsendable, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"URL is longer than {MAX_URL_CHARS} characters"
    if not url.startswith(("http://", "https://")):
        return "Only HTTP(S) protocols are supported"
    if not _TOKEN.match(method) or len(method) > MAX_METHOD_CHARS:
        return f"{_quoted(method)} is not a valid HTTP method"
    if len(headers) > MAX_HEADERS:
        return f"more than {MAX_HEADERS} headers"
    if sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_CHARS:
        return f"headers are larger than {MAX_HEADER_CHARS // 1024} KB"
    for name, value in headers:
        if not _TOKEN.match(name):
            return f"{_quoted(name)} is not a legal HTTP header name"
        if _BAD_HEADER_VALUE.search(value):
            return f"the value of header {_quoted(name)} contains a line break or NUL"
    return None


def _quoted(text: str) -> str:
    """Quote a function's text in a refusal: whole or not at all, as a cut could leave a
    secret's first characters, which redaction does not know (a whole one it replaces)."""
    return repr(text) if len(text) <= 40 else f"a {len(text)}-character name"


def _logs(raw: object, cap: int) -> tuple[list[tuple[str, str]], bool, bool]:
    """Return the lines that fit `cap`, whether any was left out or cut, and whether the last
    line kept was cut."""
    _need(isinstance(raw, list), "logs are not a list")
    assert isinstance(raw, list)
    out: list[tuple[str, str]] = []
    used = 0
    cut = last_cut = False
    for entry in raw:
        _need(
            isinstance(entry, list) and len(entry) == 2 and entry[0] in LOG_LEVELS,
            "log entry is not a [level, line] pair",
        )
        _need(isinstance(entry[1], str), "log line is not a string")
        room = cap - used
        if room <= 0:
            cut = True
            break
        # CUT_MARGIN past the cap: the worker cuts it to `room` once it is redacted.
        last_cut = len(entry[1]) > room + CUT_MARGIN
        line = entry[1][: room + CUT_MARGIN] if last_cut else entry[1]
        cut = cut or last_cut
        out.append((entry[0], line))
        used += len(line) + 1
    return out, cut, last_cut


# A \\uXXXX escape of a surrogate not itself escaped (after an even run of backslashes).
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _with_lone_surrogates_replaced(text: str, error: orjson.JSONDecodeError) -> Any:
    """Parse a report whose strings hold lone surrogates (half of a pair: a string cut inside
    an emoji, say), which V8's JSON.stringify escapes and orjson refuses: each becomes U+FFFD,
    as an encoder to UTF-8 writes it (a valid pair is never escaped)."""
    mended = _SURROGATE_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", text)
    if mended == text:
        raise ReportRejected("report is not JSON") from error
    try:
        return orjson.loads(mended)
    except orjson.JSONDecodeError as exc:
        raise ReportRejected("report is not JSON") from exc


def parse_report(
    text: str,
    *,
    expected: int,
    keep_values: bool,
    log_cap: int,
    max_request_bytes: int,
    fetches_so_far: int = 0,
) -> Report:
    """Check a context's report; `expected` is the number of results it must carry."""
    _need(isinstance(text, str), "report is not a string")
    _need(len(text) <= MAX_REPORT_CHARS, f"report is larger than {MAX_REPORT_CHARS} characters")
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raw = _with_lone_surrogates_replaced(text, exc)
    _need(isinstance(raw, dict), "report is not an object")
    done, fetches, timer = raw.get("done"), raw.get("fetches", []), raw.get("timer", -1)
    _need(isinstance(done, bool), "done is not a boolean")
    _need(isinstance(fetches, list), "fetches are not a list")
    _need(_is_number(timer), "timer is not a number")
    _need(
        fetches_so_far + len(fetches) <= MAX_FETCHES_PER_INVOCATION,
        f"more than {MAX_FETCHES_PER_INVOCATION} requests in one invocation",
    )
    report = Report(
        done=done,
        fetches=[_fetch(f, max_request_bytes) for f in fetches],
        timer_ms=float(timer),
    )
    if not done:
        return report
    results = raw.get("results")
    _need(isinstance(results, list), "results are not a list")
    _need(len(results) == expected, f"{len(results)} results for {expected} events")
    for r in results:
        if isinstance(r, dict):
            report.results.append(_error(r))
        else:
            _need(r in (FINISHED, UNFINISHED) and _is_int(r), "result is not 0, 2 or an error")
            report.results.append(r)
    if keep_values:
        values = raw.get("values")
        _need(isinstance(values, list) and len(values) == expected, "values do not match results")
        report.values = bounded(values, -1)  # the list of values is no level of theirs
    batch_value = raw.get("batchValue", ABSENT)
    report.batch_value = batch_value if batch_value is ABSENT else bounded(batch_value)
    logs = raw.get("logs", [])
    report.logs, cut, last_cut = _logs(logs, log_cap)
    dropped = raw.get("logsDropped", 0)
    _need(_is_int(dropped) and dropped >= 0, "logsDropped is not a count")
    report.logs_dropped = dropped or (1 if cut else 0)  # the context counts its cut line
    # Cut by the context, the last line is only if the context's last is kept.
    kept_last = len(report.logs) == len(logs)
    report.last_log_cut = last_cut or (kept_last and raw.get("logCut") is True)
    return report
