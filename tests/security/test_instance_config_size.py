"""One instance's configuration must never stop the data plane's configuration stream: the
registry sends each instance whole in one message, and the watchers accept 16 MiB. Before the
bounds, a 4.9 MB function with 1,300 long filters made an instance of 17.9 MB: every router,
executor and retrier failed its WatchConfig with RESOURCE_EXHAUSTED and no tenant's change
(a new source, a rotated write key) reached them. An instance at every bound now arrives,
and the changes after it too; beyond a bound a save is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.config_watch import ConfigWatcher
from services.executor.versions import VersionSource
from services.filters.limits import MAX_FILTERS, MAX_FILTERS_CHARS
from services.registry.validation import MAX_CODE_BYTES, MAX_SETTINGS_BYTES
from tests.cli.conftest import Cli, cli, project
from tests.registry.conftest import SERVICE, SETTINGS, Registry, auth, registry
from tests.registry.test_flows import (
    expect,
    make_function,
    new_function,
    new_instance,
    settings,
    violations,
)

__all__ = ["cli", "project", "registry"]

HANDLER = "async function onTrack(event, settings) {}\n"


def largest_code() -> str:
    """A handler padded with a comment to just under the code bound."""
    return HANDLER + "//" + "x" * (MAX_CODE_BYTES - len(HANDLER) - 3) + "\n"


def largest_filters() -> list[str]:
    """As many filters as an instance may have, as long as they may be together."""
    each = MAX_FILTERS_CHARS // MAX_FILTERS  # characters per filter
    return [f'event = "{i:03d}{"x" * (each - 13)}"' for i in range(MAX_FILTERS)]


async def test_an_instance_at_every_bound_reaches_the_data_plane_and_so_do_later_changes(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Largest")
    # Answers carrying a version's code pass gRPC's default 4 MiB: a client raises its limit.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{registry.port}", options=[("grpc.max_receive_message_length", 8 << 20)]
    ) as channel:
        await watch_the_largest(registry_pb2_grpc.RegistryStub(channel), registry, ws_id, owner)


async def watch_the_largest(
    stub: registry_pb2_grpc.RegistryStub, registry: Registry, ws_id: str, owner: str
) -> None:
    """Create the largest instance through `stub`; a watcher gets it, then a later change."""
    parent = f"workspaces/{ws_id}"
    fn = await stub.CreateFunction(
        new_function(parent, "Largest", settings=SETTINGS, code=largest_code()),
        metadata=auth(owner),
    )
    src = await registry.stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="web")),
        metadata=auth(owner),
    )
    key = "k" * (MAX_SETTINGS_BYTES - 100)
    made = await registry.stub.CreateInstance(
        new_instance(
            parent,
            fn.function.name,
            src.source.name,
            settings=settings(endpoint="https://api.example.com", apiKey=key),
            filters=largest_filters(),
        ),
        metadata=auth(owner),
    )
    instance_id = made.instance.name.rsplit("/", 1)[1]

    watcher = ConfigWatcher(f"127.0.0.1:{registry.port}", SERVICE, "largest")
    watcher.start()
    try:
        view = await asyncio.wait_for(watcher.wait_until(lambda v: instance_id in v.instances), 30)
        assert len(view.code_of(view.instances[instance_id])) > MAX_CODE_BYTES - 10
        # Another tenant's change after it still arrives: the stream goes on.
        other_id, other = await registry.workspace("Neighbour")
        added = await registry.stub.CreateSource(
            pb.CreateSourceRequest(
                parent=f"workspaces/{other_id}", source=res.Source(display_name="later")
            ),
            metadata=auth(other),
        )
        await asyncio.wait_for(
            watcher.wait_until(lambda v: added.source.write_key in v.sources_by_write_key),
            30,
        )
    finally:
        await watcher.close()


async def test_setting_values_past_their_bound_are_refused(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Large settings")
    fn, src = await make_function(registry, owner)
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(
                f"workspaces/{ws_id}",
                fn,
                src,
                settings=settings(endpoint="https://x", apiKey="k" * (MAX_SETTINGS_BYTES + 1)),
            ),
            metadata=auth(owner),
        ),
    )
    (field, reason), *_ = violations(error)
    assert field == "settings" and str(MAX_SETTINGS_BYTES) in reason


async def test_the_cli_reads_a_function_as_large_as_the_code_bound(
    cli: Cli, tmp_path: Path
) -> None:
    await cli.ok("workspaces", "create", "Large code")
    handler = tmp_path / "handler.js"
    handler.write_text(largest_code())
    made = await cli.ok("functions", "create", "Large", "--file", str(handler))
    assert "fn_" in made.stdout
    listed = await cli.ok("functions", "list")
    assert "Large" in listed.stdout


async def test_the_data_plane_reads_a_version_of_the_largest_code(registry: Registry) -> None:
    """A pack pinned to a version (a replay) makes the executor read that version: with
    gRPC's default 4 MiB, a function over it could not be replayed (RESOURCE_EXHAUSTED)."""
    ws_id, owner = await registry.workspace("Largest version")
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{registry.port}", options=[("grpc.max_receive_message_length", 8 << 20)]
    ) as channel:
        made = await registry_pb2_grpc.RegistryStub(channel).CreateFunction(
            new_function(f"workspaces/{ws_id}", "Largest", settings=SETTINGS, code=largest_code()),
            metadata=auth(owner),
        )
    versions = VersionSource(f"127.0.0.1:{registry.port}", SERVICE)
    try:
        config = pb.InstanceConfig(
            workspace_id=ws_id, function_id=made.function.name.rsplit("/", 1)[-1]
        )
        version = await versions.get(config, made.version.name.rsplit("/", 1)[-1])
    finally:
        await versions.close()
    assert version is not None and len(version.code) > 4 << 20
