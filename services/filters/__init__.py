"""The destination-filter language: conditions (FQL-like), filter actions, their one error.

The router runs compiled filters on every event; the registry parses them on save so that
a filter that would not run is refused with its position.
"""

from .actions import CompiledFilter, apply_filters, build_filter, parse_filter
from .errors import FilterSyntaxError
from .limits import exceeded, texts_exceeded

__all__ = [
    "CompiledFilter",
    "FilterSyntaxError",
    "apply_filters",
    "build_filter",
    "exceeded",
    "parse_filter",
    "texts_exceeded",
]
