"""The CLI finds the platform from any directory, and a second platform cannot take a port
the first listens on (issue 11, items 3 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from services.cli.context import locate_state_dir, read_pointer
from services.common import rpc
from tests.cli.conftest import Cli
from tests.registry.conftest import Registry


async def test_the_cli_works_from_a_subdirectory(cli: Cli, project: Path) -> None:
    deeper = project / "src" / "functions"
    deeper.mkdir(parents=True)
    shown = await cli.ok("workspaces", "show", cwd=deeper, process=True)
    assert "default" in shown.stdout  # the bootstrap admin's workspace
    status = await cli.ok("status", cwd=deeper, process=True)
    assert "registry" in status.stdout and "serving" in status.stdout


async def test_the_cli_works_from_another_directory_through_the_user_pointer(
    cli: Cli, project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = await cli.fails("status", cwd=elsewhere, process=True)
    assert lost.lines == [
        f"error: no platform found (looked for {elsewhere / '.eventfn'}): start it with "
        "`make up`, or set EVENTFN_STATE_DIR to its state directory"
    ]
    # What `eventfn up` writes when the platform is up.
    pointer = cli.home / ".config" / "eventfn" / "platform.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"state_dir": str(project / ".eventfn")}))
    status = await cli.ok("status", cwd=elsewhere, process=True)
    assert "serving" in status.stdout
    await cli.ok("workspaces", "show", cwd=elsewhere, process=True)


async def test_eventfn_state_dir_wins(cli: Cli, project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-state"
    other.mkdir()
    result = await cli.fails("status", EVENTFN_STATE_DIR=str(other))
    assert str(other) in result.stderr
    await cli.ok("status", cwd=tmp_path, EVENTFN_STATE_DIR=str(project / ".eventfn"))


def test_state_dir_lookup_order(tmp_path: Path) -> None:
    project = tmp_path / "p"
    (project / ".eventfn").mkdir(parents=True)
    (project / ".eventfn" / "cli.json").write_text("{}")
    inner = project / "a" / "b"
    inner.mkdir(parents=True)
    assert locate_state_dir({}, inner, None) == project / ".eventfn"
    assert locate_state_dir({"EVENTFN_STATE_DIR": "s"}, inner, None) == inner / "s"
    assert locate_state_dir({}, tmp_path, "/pointed") == Path("/pointed")
    assert locate_state_dir({}, tmp_path, None) == tmp_path / ".eventfn"
    # A pointer to a state dir without a context file points nowhere.
    pointer = tmp_path / "platform.json"
    pointer.write_text(json.dumps({"state_dir": str(tmp_path / "gone")}))
    assert read_pointer(pointer) is None
    pointer.write_text(json.dumps({"state_dir": str(project / ".eventfn")}))
    assert read_pointer(pointer) == str(project / ".eventfn")


async def test_a_second_grpc_server_on_a_taken_port_fails_with_one_line(
    registry: Registry,
) -> None:
    for taken in (f"127.0.0.1:{registry.port}", f"localhost:{registry.port}"):
        try:
            rpc.create_server(address=taken, register=[], service_names=[])
        except OSError as error:
            message = str(error)
        else:
            raise AssertionError(f"a second server listened on {taken}")
        assert "\n" not in message and taken in message and "already in use" in message


async def test_a_grpc_server_never_shares_a_port_with_a_default_one() -> None:
    # grpc's default (SO_REUSEPORT on) on the first server: ours still refuses to join it.
    first = grpc.aio.server()
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    try:
        try:
            rpc.create_server(address=f"127.0.0.1:{port}", register=[], service_names=[])
        except OSError as error:
            assert str(port) in str(error)
        else:
            raise AssertionError("shared a port with another server")
    finally:
        await first.stop(0)


async def test_a_second_eventfn_up_on_a_taken_grpc_port_fails_with_one_line(
    cli: Cli, registry: Registry, tmp_path: Path
) -> None:
    state = tmp_path / "second"
    result = await cli.fails(
        "up",
        process=True,
        EVENTFN_STATE_DIR=str(state),
        EVENTFN_REGISTRY_LISTEN=f"127.0.0.1:{registry.port}",
    )
    assert result.lines == [
        f"error: cannot listen on 127.0.0.1:{registry.port} for the registry (gRPC) (Address "
        "already in use): is another eventfn running? Stop it, or set EVENTFN_REGISTRY_LISTEN "
        "to a free address"
    ]
    assert not (state / "postgres").exists(), "nothing was started"
    assert not (cli.home / ".config" / "eventfn" / "platform.json").exists()
