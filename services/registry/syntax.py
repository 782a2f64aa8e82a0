"""Validators the registry borrows from the data plane, so Save rejects what would not run."""

from __future__ import annotations

from services.executor.runtime.syntax import check_syntax
from services.router.filters import parse_filter


def check_filter(text: str) -> None:
    """Parse a destination filter; raise with its position when it does not parse."""
    parse_filter(text)


__all__ = ["check_filter", "check_syntax"]
