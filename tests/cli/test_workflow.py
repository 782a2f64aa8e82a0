"""The workflow commands a first user missed (issue 11, items 9 and 11): switching workspaces,
member roles, renaming, clearing filters, JSON lists, times with a zone, help for `dead`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.conftest import Cli
from tests.cli.test_settings_and_deploy import ids, make_function

ZONED_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d")


async def test_workspaces_list_and_use(cli: Cli) -> None:
    created = await cli.ok("workspaces", "create", "Acme")
    ws = ids(created.stdout, "ws")[0]
    assert "workspaces use admin" in created.stdout
    listed = json.loads((await cli.ok("workspaces", "list", "--json")).stdout)
    assert [(w["use"], w["current"]) for w in listed] == [("admin", False), (ws, True)]

    await cli.ok("workspaces", "use", "admin")
    shown = await cli.ok("workspaces", "show")
    assert "True" in shown.stdout  # the bootstrap admin again
    await cli.ok("workspaces", "create", "Globex", "--no-use")
    assert "True" in (await cli.ok("workspaces", "show")).stdout

    await cli.ok("workspaces", "use", "Acme")
    assert "Acme" in (await cli.ok("workspaces", "show")).stdout
    unknown = await cli.fails("workspaces", "use", "Initech")
    assert len(unknown.lines) == 1 and "Acme" in unknown.lines[0] and "Globex" in unknown.lines[0]

    member = await cli.ok("members", "create", "dev@acme.io", "--role", "source-admin")
    member_id = ids(member.stdout, "mem")[0]
    token = (await cli.ok("tokens", "create", "dev", "--member", member_id)).stdout
    secret = re.search(r"efn_\S+", token)
    assert secret is not None and "never expires" in token
    hour = (await cli.ok("tokens", "create", "ci", "--member", member_id, "--ttl", "3600")).stdout
    assert re.search(r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", hour), hour
    await cli.ok("workspaces", "use", "--token", secret.group(0))
    assert "dev@acme.io" in (await cli.ok("workspaces", "show")).stdout


async def test_members_change_roles_and_leave(cli: Cli) -> None:
    await cli.ok("workspaces", "create", "Roles")
    await cli.ok("members", "create", "ops@roles.io", "--role", "functions-read-only")
    # A role given twice is one grant (the API takes each role once).
    changed = await cli.ok(
        "members",
        "set-roles",
        "ops@roles.io",
        *("--role", "source-admin", "--role", "owner", "--role", "source-admin"),
    )
    assert "source-admin owner" in changed.stdout
    listed = json.loads((await cli.ok("members", "list", "--json")).stdout)
    assert any(m["email"] == "ops@roles.io" and len(m["roles"]) == 2 for m in listed)
    await cli.ok("members", "remove", "ops@roles.io")
    listed = json.loads((await cli.ok("members", "list", "--json")).stdout)
    assert not any(m["email"] == "ops@roles.io" for m in listed)
    gone = await cli.fails("members", "remove", "ops@roles.io")
    assert len(gone.lines) == 1


async def test_instances_rename_disable_and_clear_filters(cli: Cli, tmp_path: Path) -> None:
    fn, src, _ = await make_function(cli, tmp_path, [])
    made = await cli.ok(
        "instances", "create", "--function", fn, "--source", src, "--filter", 'type = "identify"'
    )
    ins = ids(made.stdout, "ins")[0]
    renamed = await cli.ok("instances", "update", ins, "--name", "EU hook", "--disabled")
    assert "renamed to 'EU hook', disabled" in renamed.stdout
    assert "enabled" not in renamed.stdout
    cleared = await cli.ok("instances", "update", ins, "--clear-filters")
    assert "filters (none)" in cleared.stdout
    listed = json.loads((await cli.ok("instances", "list", "--json")).stdout)
    (mine,) = [i for i in listed if i["name"].endswith(f"/instances/{ins}")]
    assert mine["displayName"] == "EU hook" and mine["state"] == "STATE_DISABLED"
    assert not mine.get("filters")
    for command in (["functions", "list"], ["sources", "list"], ["tokens", "list"], ["audit"]):
        assert isinstance(json.loads((await cli.ok(*command, "--json")).stdout), list)


async def test_instances_propagate_trace_flag(cli: Cli, tmp_path: Path) -> None:
    fn, src, _ = await make_function(cli, tmp_path, [])
    made = await cli.ok(
        "instances", "create", "--function", fn, "--source", src, "--propagate-trace"
    )
    assert "sending trace context" in made.stdout
    ins = ids(made.stdout, "ins")[0]
    shown = json.loads((await cli.ok("instances", "show", ins)).stdout)
    assert shown["propagateTrace"] is True
    off = await cli.ok("instances", "update", ins, "--no-propagate-trace")
    assert "trace propagation off" in off.stdout
    shown = json.loads((await cli.ok("instances", "show", ins)).stdout)
    assert "propagateTrace" not in shown  # false: the default, not printed
    plain = await cli.ok("instances", "create", "--function", fn, "--source", src, "--name", "b")
    assert "trace context" not in plain.stdout
    other = ids(plain.stdout, "ins")[0]
    on = await cli.ok("instances", "update", other, "--propagate-trace")
    assert "trace propagation on" in on.stdout
    listing = (await cli.ok("instances", "list", "--function", fn)).stdout.splitlines()
    rows = {ids(line, "ins")[0]: line for line in listing if ids(line, "ins")}
    assert "propagated" in rows[other] and "propagated" not in rows[ins]


async def test_times_carry_their_zone(cli: Cli) -> None:
    await cli.ok("workspaces", "create", "Zones")
    listed = await cli.ok("tokens", "list")
    assert ZONED_TIME.search(listed.stdout), listed.stdout


async def test_dead_alone_shows_its_help(cli: Cli) -> None:
    result = await cli("dead")
    assert "Missing command" not in result.stdout + result.stderr
    assert "replay" in result.stdout and "purge" in result.stdout


async def test_preview_settings_take_values_and_the_egress_hint_names_allow(
    cli: Cli, tmp_path: Path
) -> None:
    handler = tmp_path / "handler.js"
    handler.write_text(
        "async function onTrack(event, settings) {\n"
        "  await fetch(settings.endpoint, { method: 'POST', body: JSON.stringify(event) })\n"
        "}\n"
    )
    schema = tmp_path / "schema.json"
    schema.write_text('[{"name": "endpoint", "type": "string"}]')
    wrong = await cli.fails("preview", str(handler), "--settings", str(schema))
    assert len(wrong.lines) == 1 and "--settings takes test values" in wrong.lines[0]
    refused = await cli.fails(
        "preview", str(handler), "--set", "endpoint=http://127.0.0.1:9/hook", "--json"
    )
    assert "--allow" in refused.stdout and "EVENTFN_EGRESS_ALLOW" in refused.stdout
