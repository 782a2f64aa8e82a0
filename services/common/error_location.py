"""Where in the function's code an error happened, read from its V8 stack (pure)."""

from __future__ import annotations

import re

# The name the runtime gives the function's code in stack frames (runtime.engine.SCRIPT_NAME).
SCRIPT_NAME = "function.js"
# A V8 stack frame in the function's code: `    at onTrack (function.js:3:11)` or
# `    at function.js:3:11`; the message line above the frames is never matched.
_FRAME = re.compile(r"^\s+at (?:.*[ (])?" + re.escape(SCRIPT_NAME) + r":(\d+):(\d+)\)?$")


def error_location(stack: str) -> tuple[int, int] | None:
    """Return the line and column of the innermost frame in the function's code, if any."""
    for line in stack.splitlines():
        found = _FRAME.match(line)
        if found:
            return int(found.group(1)), int(found.group(2))
    return None


def function_frames(stack: str) -> list[str]:
    """Return the stack's frames in the function's code, innermost first (without the message
    lines above them, and without the runtime's own frames, which mean nothing to its author)."""
    return [line.strip() for line in stack.splitlines() if _FRAME.match(line)]


def location_text(stack: str) -> str:
    """Return `function.js:LINE:COL` of the innermost frame in the function's code, or ""."""
    where = error_location(stack)
    return "" if where is None else f"{SCRIPT_NAME}:{where[0]}:{where[1]}"


def describe_error(error_type: str, message: str, stack: str = "") -> str:
    """Return `Type: message`, followed by ` (function.js:LINE:COL)` when the stack has it."""
    text = f"{error_type}: {message}" if error_type and message else error_type or message
    where = location_text(stack)
    return f"{text} ({where})" if where else text
