"""What a new user ran into in their first hour: files that are not UTF-8, wording, --version."""

from __future__ import annotations

import importlib.metadata
import json
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


async def test_an_id_of_the_wrong_kind_takes_the_right_article(cli: Cli) -> None:
    await cli.ok("workspaces", "create", "Articles")
    wrong = await cli.fails("instances", "show", "fn_0123")
    assert wrong.lines == ["error: 'fn_0123' is not an instance id (instance ids look like ins_…)"]
    wrong = await cli.fails("functions", "show", "ins_0123")
    assert wrong.lines == ["error: 'ins_0123' is not a function id (function ids look like fn_…)"]


async def test_an_invalid_token_says_how_to_get_a_working_one(cli: Cli) -> None:
    from_env = await cli.fails("workspaces", "show", EVENTFN_TOKEN="efn_not_a_token")
    assert len(from_env.lines) == 1, from_env.lines
    assert "tokens create" not in from_env.lines[0]
    assert "the token is not valid" in from_env.lines[0]
    assert "EVENTFN_TOKEN" in from_env.lines[0]
    assert "`eventfn workspaces create` printed" in from_env.lines[0]

    context = cli.cwd / ".eventfn" / "cli.json"
    context.write_text(context.read_text().replace('"token": "', '"token": "efn_stale', 1))
    stale = await cli.fails("sources", "list")
    assert len(stale.lines) == 1, stale.lines
    assert "tokens create" not in stale.lines[0]
    assert "eventfn workspaces use admin" in stale.lines[0]
    assert str(context) in stale.lines[0]
    await cli.ok("workspaces", "use", "admin")
    await cli.ok("sources", "list")


async def test_a_missing_or_null_schema_field_is_not_called_none(cli: Cli, tmp_path: Path) -> None:
    await cli.ok("workspaces", "create", "Nameless")
    handler = tmp_path / "handler.js"
    handler.write_text(HANDLER)
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            [
                {"name": "endpoint", "label": "Endpoint", "type": "string"},
                {"label": "API Key", "type": "string"},
                {"name": None, "label": "Region"},
                {"name": 7, "label": "Seven"},
                {"name": "tier", "type": None},
                {"name": "plan", "type": True},
            ]
        )
    )
    result = await cli.fails(
        "functions", "create", "Nameless", "--file", str(handler), "--settings", str(schema)
    )
    assert not any("None" in line or "True" in line for line in result.lines), result.lines
    problems = dict(line.strip().split(": ", 1) for line in result.lines[1:])
    assert problems["settings[1].name"].startswith("is missing")
    assert problems["settings[2].name"].endswith("got null")
    assert problems["settings[3].name"].endswith("got a number")
    assert problems["settings[4].type"].endswith("got null")
    assert problems["settings[5].type"].endswith("got a boolean")


async def test_version_prints_the_installed_distributions(cli: Cli) -> None:
    result = await cli.ok("--version")
    assert result.stdout == f"eventfn {importlib.metadata.version('eventfn')}\n"
    assert (await cli.ok("--version", "status")).stdout == result.stdout


async def test_a_file_defining_no_handler_is_saved_with_a_warning(cli: Cli, tmp_path: Path) -> None:
    """A typo in every handler's name (`ontrack`) made a function that discarded every
    event as EventNotSupported, saved without a word."""
    await cli.ok("workspaces", "create", "No handlers")
    typo = tmp_path / "typo.js"
    typo.write_text("async function ontrack(event, settings) {}\n")
    made = await cli.ok("functions", "create", "Typo", "--file", str(typo))
    assert "ontrack should be onTrack" in made.stderr and "EventNotSupported" in made.stderr
    right = tmp_path / "right.js"
    right.write_text("async function onTrack(event, settings) {}\n")
    made = await cli.ok("functions", "create", "Right", "--file", str(right))
    assert "warning" not in made.stderr
