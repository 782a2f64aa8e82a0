"""Others' text made printable: in the CLI's output and in the services' text logs."""

from __future__ import annotations

import io
import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from services.common.printable import printable
from services.common.telemetry import setup_logging

ESCAPED = re.compile(r"\\x[0-9a-f]{2}|\\u[0-9a-f]{4}")


@given(st.text())
def test_printable_text_holds_no_control_character_and_reads_back(text: str) -> None:
    shown = printable(text, keep="\n")
    assert not any(_control(c) and c != "\n" for c in shown), repr(shown)
    if "\\" not in text:  # each escape stands for the one character it names
        assert ESCAPED.sub(lambda m: chr(int(m.group()[2:], 16)), shown) == text


def _control(char: str) -> bool:
    code = ord(char)
    return (
        code < 0x20 or 0x7F <= code <= 0x9F or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069
    )


def test_a_logged_tenant_text_can_forge_no_line_and_move_no_cursor() -> None:
    """A function's error logged by a service: a line break in it would start a forged log
    line; ESC would clear the terminal of the operator reading the log."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        error = "boom\n2026-12-01 12:00:00 INFO services.registry: admin token rotated\x1b[2J"
        logging.getLogger("services.retrier").info("events dead-lettered: %s", error)
        try:
            raise RuntimeError("with a traceback")
        except RuntimeError:
            logging.getLogger("services.retrier").exception("failed")
        lines = stream.getvalue().splitlines()
        assert lines[0].endswith(
            "events dead-lettered: boom\\x0a2026-12-01 12:00:00 INFO services.registry: "
            "admin token rotated\\x1b[2J"
        ), lines[0]
        assert "\x1b" not in stream.getvalue()
        assert lines[1].endswith("failed") and lines[2] == "Traceback (most recent call last):"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
