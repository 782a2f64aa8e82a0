"""Settings through the CLI: Segment's type names, every bad definition, `--set` by declared
type, and deploying a version that adds a required setting (issue 11, items 4 and 10)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.conftest import Cli

HANDLER = "async function onTrack(event, settings) { return settings }\n"


def ids(text: str, prefix: str) -> list[str]:
    """Return the ids with a prefix printed in a CLI answer, in order."""
    return re.findall(rf"\b{prefix}_[0-9a-f]{{20}}\b", text)


async def make_function(cli: Cli, tmp: Path, schema: list[dict]) -> tuple[str, str, Path]:
    """Create a workspace, source and function; return (function id, source id, handler)."""
    await cli.ok("workspaces", "create", f"Acme {tmp.name}")
    source = await cli.ok("sources", "create", "Website")
    handler = tmp / "handler.js"
    handler.write_text(HANDLER)
    schema_file = tmp / "schema.json"
    schema_file.write_text(json.dumps(schema))
    made = await cli.ok(
        "functions", "create", "Webhook", "--file", str(handler), "--settings", str(schema_file)
    )
    return ids(made.stdout, "fn")[0], ids(source.stdout, "src")[0], handler


async def test_segment_type_names_and_set_values_by_type(cli: Cli, tmp_path: Path) -> None:
    fn, src, _ = await make_function(
        cli,
        tmp_path,
        [
            {"name": "endpoint", "label": "Endpoint", "type": "String", "required": True},
            {"name": "headers", "label": "Headers", "type": "text map"},
            {"name": "tags", "label": "Tags", "type": "array"},
            {"name": "debug", "label": "Debug", "type": "BOOLEAN"},
        ],
    )
    shown = await cli.ok("functions", "show", fn)
    assert all(kind in shown.stdout for kind in ("text-map", "string-array", "boolean"))
    made = await cli.ok(
        "instances", "create", "--function", fn, "--source", src,
        "--set", "endpoint=123",
        "--set", 'headers={"X-Team": "growth"}',
        "--set", "tags=a,b",
        "--set", "debug=yes",
    )  # fmt: skip
    ins = ids(made.stdout, "ins")[0]
    settings = json.loads((await cli.ok("instances", "show", ins)).stdout)["settings"]
    assert settings == {
        "endpoint": "123",
        "headers": {"X-Team": "growth"},
        "tags": ["a", "b"],
        "debug": True,
    }
    bad = await cli.fails(
        "instances", "update", ins,
        "--set", 'headers={"X-Team": 1}',
        "--set", "tags=[1]",
        "--set", "debug=maybe",
    )  # fmt: skip
    assert bad.lines == [
        f"error: 3 bad --set value(s) for version {made.stdout.split('running ')[1].strip()}",
        "  --set headers: must be a text map of strings: key 'X-Team' holds a number",
        "  --set tags: must be an array of strings: item [0] is a number",
        "  --set debug: must be true or false, got 'maybe'",
    ]


async def test_every_bad_definition_is_reported(cli: Cli, tmp_path: Path) -> None:
    await cli.ok("workspaces", "create", "Schemas")
    handler = tmp_path / "handler.js"
    handler.write_text(HANDLER)
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            [
                {"name": "a", "type": "number"},
                {"name": "b", "type": "list of things"},
                {"name": "2c", "type": "string"},
            ]
        )
    )
    result = await cli.fails(
        "functions", "create", "Bad", "--file", str(handler), "--settings", str(schema)
    )
    assert result.lines[0] == f"error: {schema}: 3 problem(s) in the settings schema"
    assert [line.split(":")[0].strip() for line in result.lines[1:]] == [
        "settings[0].type",
        "settings[1].type",
        "settings[2].name",
    ]


async def test_deploy_with_a_new_required_setting(cli: Cli, tmp_path: Path) -> None:
    v1 = [{"name": "endpoint", "label": "Endpoint", "type": "string", "required": True}]
    fn, src, handler = await make_function(cli, tmp_path, v1)
    made = await cli.ok(
        "instances", "create", "--function", fn, "--source", src,
        "--set", "endpoint=https://example.com/hook",
    )  # fmt: skip
    ins = ids(made.stdout, "ins")[0]
    v2_schema = tmp_path / "v2.json"
    v2_schema.write_text(
        json.dumps([*v1, {"name": "region", "label": "Region", "type": "string", "required": True}])
    )
    saved = await cli.ok(
        "functions", "save", fn, "--file", str(handler), "--settings", str(v2_schema)
    )
    v2 = ids(saved.stdout, "ver")[0]

    refused = await cli.fails("functions", "deploy", v2, "--instance", ins)
    assert refused.lines == [
        "error: invalid argument: invalid settings values",
        "  --set region=…: the required setting 'region' is missing",
    ]
    # The current version does not declare it: `instances update` says where it goes.
    update = await cli.fails("instances", "update", ins, "--set", "region=eu")
    assert "functions deploy" in update.lines[0]

    await cli.ok("functions", "deploy", v2, "--instance", ins, "--set", "region=eu")
    # Each version's row names the instances running it (which to roll back to, and where).
    versions = await cli.ok("functions", "versions", fn)
    (running,) = [line for line in versions.lines if ins in line]
    assert v2 in running
    shown = json.loads((await cli.ok("instances", "show", ins)).stdout)
    assert shown["version"].endswith(f"/versions/{v2}")
    assert shown["settings"] == {"endpoint": "https://example.com/hook", "region": "eu"}

    v3_schema = tmp_path / "v3.json"
    v3_schema.write_text(
        json.dumps([*v1, {"name": "tier", "label": "Tier", "type": "string", "required": True}])
    )
    save_deploy = await cli.ok(
        "functions", "save", fn, "--file", str(handler), "--settings", str(v3_schema),
        "--deploy", ins, "--set", "tier=gold",
    )  # fmt: skip
    assert f"deployed to Webhook ← Website ({ins})" in save_deploy.stdout
    # Bad values name the flag that sets them, not the API's field.
    slow = await cli.fails("instances", "update", ins, "--timeout-ms", "9999999")
    assert "  --timeout-ms: must be 100ms..60s, got 9999999ms" in slow.lines
    shown = json.loads((await cli.ok("instances", "show", ins)).stdout)
    assert shown["settings"] == {"endpoint": "https://example.com/hook", "tier": "gold"}
    lonely = await cli.fails("functions", "save", fn, "--file", str(handler), "--set", "tier=x")
    assert "--deploy" in lonely.lines[0]


async def test_delete_a_version_no_instance_runs(cli: Cli, tmp_path: Path) -> None:
    v1_schema = [{"name": "endpoint", "label": "Endpoint", "type": "string", "required": True}]
    fn, src, handler = await make_function(cli, tmp_path, v1_schema)
    v1 = ids((await cli.ok("functions", "versions", fn)).stdout, "ver")[0]
    made = await cli.ok(
        "instances", "create", "--function", fn, "--source", src,
        "--set", "endpoint=https://example.com/hook",
    )  # fmt: skip
    ins = ids(made.stdout, "ins")[0]
    v2 = ids((await cli.ok("functions", "save", fn, "--file", str(handler))).stdout, "ver")[0]

    latest = await cli.fails("functions", "delete-version", fn, v2)
    assert "latest" in latest.lines[0]
    running = await cli.fails("functions", "delete-version", fn, v1)
    assert ins in running.lines[0] and "DeployInstance" in running.lines[0]

    await cli.ok("functions", "deploy", v2, "--instance", ins)
    deleted = await cli.ok("functions", "delete-version", fn, v1)
    assert deleted.lines == [f"version {v1} of {fn} deleted"]
    assert ids((await cli.ok("functions", "versions", fn)).stdout, "ver") == [v2]
