"""Text that others wrote, made safe to print: a function's errors and console output, the
fields of events (anyone with a write key), display names. Control characters would act on
the terminal that shows them (ESC starts the sequences that clear the screen, write the
clipboard, hide links) or forge lines of a log; each is shown as `\\xNN` (`\\uNNNN`)."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what is shown.
_CONTROLS = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069]")


def printable(text: str, *, keep: str = "") -> str:
    """Return `text` with every control character but those in `keep` shown escaped."""
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else _shown(m.group()), text)


def _shown(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
