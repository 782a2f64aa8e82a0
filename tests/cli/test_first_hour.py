"""What a new user ran into in their first hour: files that are not UTF-8, wording, --version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.cli.test_settings_and_deploy import HANDLER, ids

LATIN1_HANDLER = b"async function onTrack(e){ /* caf\xe9 */ }\n"
LATIN1_OFFSET = LATIN1_HANDLER.index(b"\xe9")


def not_utf8(path: Path, byte: int, offset: int) -> str:
    """Return the end of the error line naming a file that is not UTF-8."""
    return f"{path} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}); save it as UTF-8"


async def test_a_handler_that_is_not_utf8_is_named_with_the_byte(cli: Cli, tmp_path: Path) -> None:
    await cli.ok("workspaces", "create", "Latin")
    latin1 = tmp_path / "latin1.js"
    latin1.write_bytes(LATIN1_HANDLER)
    good = tmp_path / "handler.js"
    good.write_text(HANDLER)
    fn = ids((await cli.ok("functions", "create", "Good", "--file", str(good))).stdout, "fn")[0]
    for command in (
        ["functions", "create", "Latin", "--file", str(latin1)],
        ["functions", "save", fn, "--file", str(latin1)],
        ["preview", str(latin1)],
    ):
        result = await cli.fails(*command)
        assert len(result.lines) == 1, result.lines
        assert result.lines[0].endswith(not_utf8(latin1, 0xE9, LATIN1_OFFSET)), result.lines


@pytest.mark.parametrize(
    ("option", "content"),
    [
        ("--event", b'{"type": "track", "event": "Caf\xe9"}'),
        ("--settings", b'{"endpoint": "https://example.com/caf\xe9"}'),
    ],
)
async def test_preview_json_files_that_are_not_utf8_are_named(
    cli: Cli, tmp_path: Path, option: str, content: bytes
) -> None:
    handler = tmp_path / "handler.js"
    handler.write_text(HANDLER)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(content)
    result = await cli.fails("preview", str(handler), option, str(latin1))
    assert len(result.lines) == 1, result.lines
    assert result.lines[0].endswith(not_utf8(latin1, 0xE9, content.index(b"\xe9"))), result.lines
    assert "surrogates" not in result.lines[0]


async def test_a_settings_schema_that_is_not_utf8_is_named(cli: Cli, tmp_path: Path) -> None:
    await cli.ok("workspaces", "create", "Schemas")
    handler = tmp_path / "handler.js"
    handler.write_text(HANDLER)
    schema = tmp_path / "schema.json"
    content = b'[{"name": "endpoint", "label": "Adresse \xe0 appeler", "type": "string"}]'
    schema.write_bytes(content)
    result = await cli.fails(
        "functions", "create", "Latin", "--file", str(handler), "--settings", str(schema)
    )
    assert len(result.lines) == 1, result.lines
    assert result.lines[0].endswith(not_utf8(schema, 0xE0, content.index(b"\xe0"))), result.lines
