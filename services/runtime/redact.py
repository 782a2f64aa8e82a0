"""Remove secret setting values from text that leaves the runtime (logs, request traces)."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
# Values this short would redact ordinary words; encrypted settings are keys and tokens.
MIN_SECRET_LENGTH = 4


def compile_secrets(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """Build one pattern matching any secret (longest first), or None when there are none."""
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    if not values:
        return None
    return re.compile("|".join(re.escape(v) for v in values))


def redact(text: str, pattern: re.Pattern[str] | None) -> str:
    """Replace every secret in `text` with a marker."""
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)
