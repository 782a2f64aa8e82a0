"""Bounds on one instance's destination filters, checked when they are saved.

The router runs an instance's filters on each of its events, on the one event loop every
tenant's requests share, and the registry sends them in the instance's configuration to
every data-plane service: their count, their text and the searching their `match` globs may
do are bounded so that no instance can stall the router or swell the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.filters.actions import CompiledFilter
from services.filters.conditions import MAX_EVENT_WILDCARD, wildcard_cost

MAX_FILTERS = 50
MAX_FILTERS_CHARS = 16 * 1024  # all of an instance's filters together
# Searched `?` characters of all an instance's `match` globs (`wildcard_cost`): at most
# ≈ 2.5 ms of matching for a 32 KB string, however the event is made.
WILDCARD_BUDGET = 64


def exceeded(texts: Sequence[str], parsed: Sequence[CompiledFilter]) -> str | None:
    """Return which bound an instance's filters exceed, and how to fit, or None."""
    if (why := texts_exceeded(texts)) is not None:
        return why
    cost = sum(wildcard_cost(f.condition) for f in parsed)
    if cost > WILDCARD_BUDGET:
        return (
            f"match() globs with {cost} characters in `?` pieces between stars (a pattern "
            f"read from the event counts {MAX_EVENT_WILDCARD}); an instance's filters may have "
            f"at most {WILDCARD_BUDGET}: use `*` for runs of any characters"
        )
    return None


def texts_exceeded(texts: Sequence[str]) -> str | None:
    """Return which bound on their number and length an instance's filters exceed, or None:
    checked before they are parsed (parsing is ≈ 50–100 µs a filter, in Python)."""
    if len(texts) > MAX_FILTERS:
        return f"{len(texts)} filters; an instance may have at most {MAX_FILTERS}"
    chars = sum(len(text) for text in texts)
    if chars > MAX_FILTERS_CHARS:
        return (
            f"{chars} characters of filters; an instance's filters may hold at most "
            f"{MAX_FILTERS_CHARS} in all"
        )
    return None
