"""Redact a worker's reply: every text it carries out, secrets replaced, cut to its cap.

A secret in all the spellings a function may write it is a large pattern, and text made to
match long stretches of a long secret at every position costs time in proportion to both (a
secret of 3,000 characters made redacting 64 KB take 0.24 s; an onTrack of 200 events each
throwing such a message held its worker, and every invocation on it, for 24 s). So a reply has
a time budget for redaction; texts it reaches past that are withheld, never kept unredacted.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .http_fetch import TRACE_BODY_CAP
from .protocol import RunReply
from .redact import CUT_MARGIN, redact, redact_cut
from .report import (
    MAX_ERROR_MESSAGE,
    MAX_ERROR_NAME,
    MAX_ERROR_STACK,
    MAX_METHOD_CHARS,
    TRACE_TEXT_CHARS,
)

REDACTION_BUDGET_S = 1.0
# Characters of a string a preview's returned value (or onBatch's) keeps, cut once redacted.
MAX_VALUE_STRING = 64 * 1024
WITHHELD = "[withheld: too costly to redact]"


class _Redactor:
    """Redacts texts until its budget is spent, then withholds them."""

    def __init__(self, pattern: re.Pattern[str] | None, margin: int, budget_s: float) -> None:
        self._pattern = pattern
        self._margin = margin
        self._until = time.monotonic() + budget_s

    def _spent(self) -> bool:
        return self._pattern is not None and time.monotonic() > self._until

    def text(self, text: str) -> str:
        if not text or self._pattern is None:
            return text
        return WITHHELD if self._spent() else redact(text, self._pattern)

    def cut(self, text: str, cap: int, *, cut_before: bool = False) -> str:
        if text and self._spent():
            return WITHHELD if len(WITHHELD) <= cap else "…"
        return redact_cut(text, cap, self._pattern, cut_before=cut_before, margin=self._margin)

    def value(self, value: Any) -> Any:
        # String by string: in JSON text a secret with a quote or backslash is escaped, and a
        # match cutting an escape in two would leave text that no longer parses.
        if isinstance(value, str):
            return self.cut(value, MAX_VALUE_STRING)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.cut(k, MAX_VALUE_STRING): self.value(v) for k, v in value.items()}
        return value


def redact_reply(
    reply: RunReply,
    pattern: re.Pattern[str] | None,
    log_cap: int,
    last_log_cut: bool = False,
    margin: int = CUT_MARGIN,
    budget_s: float = REDACTION_BUDGET_S,
) -> None:
    """Redact the secrets out of a reply, and cut its errors, logs and traces to their caps
    (they come CUT_MARGIN longer, so no cut splits a secret before it is redacted; a text cut
    before keeps nothing of its last `margin` characters, `cut_margin`)."""
    r = _Redactor(pattern, margin, budget_s)
    logs: list[list[str]] = []
    used = 0
    last = len(reply["logs"]) - 1
    for i, (level, line) in enumerate(reply["logs"]):
        if used >= log_cap:
            reply["logs_dropped"] += 1
            break
        line = r.cut(line, log_cap - used, cut_before=last_log_cut and i == last)
        logs.append([level, line])
        used += len(line) + 1
    reply["logs"] = logs
    for result in reply["results"]:
        if isinstance(result, dict):
            result["name"] = r.cut(str(result.get("name", "")), MAX_ERROR_NAME)
            result["message"] = r.cut(str(result.get("message", "")), MAX_ERROR_MESSAGE)
            result["stack"] = r.cut(str(result.get("stack", "")), MAX_ERROR_STACK)
    for t in reply["requests"]:
        t["method"] = r.cut(t["method"], MAX_METHOD_CHARS)
        quoted = t["url"]
        t["url"] = r.cut(quoted, TRACE_TEXT_CHARS)
        for field in ("request_body", "response_body"):
            if t.get(field):
                t[field] = r.cut(t[field], TRACE_BODY_CAP)
        if t.get("error"):
            # A failed fetch's error quotes its URL: the URL as cut, and what it says around it.
            head, found, tail = t["error"].partition(quoted) if quoted else ("", "", "")
            if found:
                head, tail = r.cut(head, TRACE_TEXT_CHARS), r.cut(tail, TRACE_TEXT_CHARS)
                t["error"] = head + t["url"] + tail
            else:
                t["error"] = r.cut(t["error"], TRACE_TEXT_CHARS)
        for field in ("request_headers", "response_headers"):
            if t.get(field):
                t[field] = [[r.text(k), r.text(v)] for k, v in t[field]]
    if "values" in reply:
        reply["values"] = r.value(reply["values"])
    if "batch_value" in reply:
        reply["batch_value"] = r.value(reply["batch_value"])
