"""`eventfn admin rotate-secret-key` as an operator runs it, on a running registry."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli
from tests.registry.conftest import Registry
from tests.registry.test_key_rotation import by_id, fleet, key_rows, sealed_values, watched


async def test_rotate_secret_key_with_the_admin_token_the_cli_keeps(
    cli: Cli, registry: Registry
) -> None:
    acme = await fleet(registry, "Acme", 2)
    (old,) = [key for key, _ in await key_rows(registry.database_url)]
    await cli.ok("workspaces", "create", "Globex")  # the CLI's current token: Globex's owner

    done = await cli.ok("admin", "rotate-secret-key")

    (new,) = [key for key, _ in await key_rows(registry.database_url)]
    assert new != old
    assert f"data key {new}" in done.stdout and "2 settings of 2 instances" in done.stdout
    assert f"Deleted: {old}" in done.stdout
    assert all(v.startswith(f"v2:{new}:") for v in await sealed_values(registry.database_url))
    assert {k: v for k, v in (await watched(registry.stub)).items()} == by_id(acme.secrets)
    await cli.ok("workspaces", "use", "admin")
    assert "secret_key.rotate" in (await cli.ok("audit")).stdout

    again = json.loads((await cli.ok("admin", "rotate-secret-key", "--json")).stdout)
    assert again["retiredKeyIds"] == [new] and again["resealedSettingCount"] == 2


async def test_rotate_secret_key_refused_to_a_workspace_owner(cli: Cli, registry: Registry) -> None:
    acme = await fleet(registry, "Acme", 1)
    before = await key_rows(registry.database_url)
    refused = await cli.fails("admin", "rotate-secret-key", EVENTFN_TOKEN=acme.owner)
    assert len(refused.lines) == 1 and "permission denied" in refused.lines[0]
    assert "bootstrap administrator" in refused.lines[0]
    assert await key_rows(registry.database_url) == before
