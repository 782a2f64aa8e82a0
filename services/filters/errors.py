"""The filter language's one error: a filter definition that does not parse."""

from __future__ import annotations


class FilterSyntaxError(ValueError):
    """Reject a destination filter definition; `line`/`column` (1-based) locate the fault.

    When the fault is inside the condition, the position is within the condition text;
    otherwise it is within the stored JSON text of the filter.
    """

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.reason = message
        self.line = line
        self.column = column
