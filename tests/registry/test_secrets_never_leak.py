"""An encrypted setting value never leaves the registry except to the data plane.

Not in any RPC response (successes and errors, with their status details), not in a log line
(in-process at DEBUG, and the stderr of a registry process run at DEBUG), not in clear text in
any row of the database; WatchConfig with the service token delivers it decrypted and names it
in secret_setting_names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.registry.secrets import MASK
from tests.registry.conftest import BOOTSTRAP, HANDLER, SERVICE, SETTINGS, Registry, auth
from tests.registry.test_flows import new_function, new_instance

REPO = Path(__file__).parents[2]


def struct(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


@dataclass
class Seen:
    """Everything the registry sent back to members, as bytes to search."""

    blobs: list[tuple[str, bytes]] = field(default_factory=list)

    def response(self, label: str, message: Any) -> Any:
        self.blobs.append((label, message.SerializeToString()))
        self.blobs.append((label + " (text)", str(message).encode()))
        return message

    async def invalid(self, label: str, call: Any) -> None:
        """Expect INVALID_ARGUMENT; keep its message and trailing metadata (status details)."""
        try:
            await call
        except grpc.aio.AioRpcError as error:
            trailing = error.trailing_metadata() or ()
            self.blobs.append((label, (error.details() or "").encode()))
            for key, value in trailing:
                self.blobs.append(
                    (f"{label} [{key}]", value if isinstance(value, bytes) else value.encode())
                )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error.details())
            return
        raise AssertionError(f"{label}: expected INVALID_ARGUMENT")

    def leaks(self, *secrets: str) -> list[str]:
        return [label for label, blob in self.blobs for s in secrets if s.encode() in blob]


@dataclass
class Exercised:
    """What one run through the RPCs produced."""

    seen: Seen
    first: str
    second: str
    instance_id: str
    watched: pb.InstanceConfig


async def exercise(stub: registry_pb2_grpc.RegistryStub) -> Exercised:
    """Create an instance with a secret, change it, deploy, read everything back, watch."""
    first, second = f"sk_live_{uuid.uuid4().hex}", f"sk_live_{uuid.uuid4().hex}"
    seen = Seen()
    made = await stub.CreateWorkspace(
        pb.CreateWorkspaceRequest(
            workspace=res.Workspace(display_name=f"Secrets {uuid.uuid4().hex[:6]}")
        ),
        metadata=auth(BOOTSTRAP),
    )
    owner = auth(made.token)
    parent = made.workspace.name
    fn = await stub.CreateFunction(
        new_function(parent, "Webhook", settings=SETTINGS), metadata=owner
    )
    src = await stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="Web")),
        metadata=owner,
    )
    fn_id, src_id = fn.function.name, src.source.name
    created = seen.response(
        "CreateInstance",
        await stub.CreateInstance(
            new_instance(
                parent,
                fn_id,
                src_id,
                settings=struct(endpoint="http://127.0.0.1:9/hook", apiKey=first),
            ),
            metadata=owner,
        ),
    )
    ins_id = created.instance.name
    assert created.instance.settings["apiKey"] == MASK

    # Bad requests that carry a secret must not echo it back in their errors.
    for label, settings in (
        ("CreateInstance missing endpoint", struct(apiKey=first)),
        ("CreateInstance apiKey of wrong type", struct(endpoint="http://x", apiKey=[first])),
        ("CreateInstance undeclared setting", struct(endpoint="http://x", apiKey=first, x=first)),
    ):
        await seen.invalid(
            label,
            stub.CreateInstance(
                new_instance(parent, fn_id, src_id, settings=settings),
                metadata=owner,
            ),
        )
    await seen.invalid(
        "UpdateInstance apiKey of wrong type",
        stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(
                    name=ins_id, settings=struct(endpoint="x", apiKey={"k": first})
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
            ),
            metadata=owner,
        ),
    )

    reads = {
        "GetInstance": stub.GetInstance(pb.GetInstanceRequest(name=ins_id), metadata=owner),
        "ListInstances": stub.ListInstances(pb.ListInstancesRequest(parent=parent), metadata=owner),
        "ListInstances by function": stub.ListInstances(
            pb.ListInstancesRequest(parent=parent, function=fn_id), metadata=owner
        ),
        "ListInstances by source": stub.ListInstances(
            pb.ListInstancesRequest(parent=parent, source=src_id), metadata=owner
        ),
    }
    for label, call in reads.items():
        seen.response(label, await call)

    for label, instance, paths in (
        ("UpdateInstance batch", res.Instance(name=ins_id, batch_size=50), ["batch_size"]),
        (
            "UpdateInstance masked secret",
            res.Instance(
                name=ins_id, settings=struct(endpoint="http://127.0.0.1:9/b", apiKey=MASK)
            ),
            ["settings"],
        ),
        (
            "UpdateInstance new secret",
            res.Instance(
                name=ins_id, settings=struct(endpoint="http://127.0.0.1:9/c", apiKey=second)
            ),
            ["settings"],
        ),
    ):
        seen.response(
            label,
            await stub.UpdateInstance(
                pb.UpdateInstanceRequest(
                    instance=instance, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=owner,
            ),
        )
    saved = seen.response(
        "SaveFunction deploy",
        await stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn_id,
                code=HANDLER + "\n// v2",
                settings=SETTINGS,
                deploy_instances=[ins_id],
            ),
            metadata=owner,
        ),
    )
    assert [i.name for i in saved.deployed_instances] == [ins_id]
    seen.response(
        "DeployInstance",
        await stub.DeployInstance(
            pb.DeployInstanceRequest(name=ins_id, version=fn.version.name), metadata=owner
        ),
    )
    more_reads = {
        "GetInstance after deploys": stub.GetInstance(
            pb.GetInstanceRequest(name=ins_id), metadata=owner
        ),
        "ListAuditEvents": stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=parent, page_size=500), metadata=owner
        ),
        "GetFunction": stub.GetFunction(pb.GetFunctionRequest(name=fn_id), metadata=owner),
        "ListFunctionVersions": stub.ListFunctionVersions(
            pb.ListFunctionVersionsRequest(parent=fn_id), metadata=owner
        ),
        "WhoAmI": stub.WhoAmI(pb.WhoAmIRequest(), metadata=owner),
    }
    for label, call in more_reads.items():
        seen.response(label, await call)

    stream = stub.WatchConfig(pb.WatchConfigRequest(watcher="secrets-test"), metadata=auth(SERVICE))
    try:
        snapshot = await asyncio.wait_for(stream.read(), timeout=10)
    finally:
        stream.cancel()
    assert isinstance(snapshot, pb.WatchConfigResponse)
    (watched,) = [i for i in snapshot.instances if i.id == ins_id.rsplit("/", 1)[-1]]
    return Exercised(seen, first, second, ins_id, watched)


def assert_watch_delivers_the_secret(run: Exercised) -> None:
    assert run.watched.settings["apiKey"] == run.second, "the data plane needs the clear value"
    assert run.watched.settings["endpoint"] == "http://127.0.0.1:9/c"
    assert list(run.watched.secret_setting_names) == ["apiKey"]


async def rows_containing(database_url: str, *needles: str) -> list[str]:
    """Return "table: row" for every row of every table whose text holds a needle."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        assert {"instance", "audit_event"} <= {t["tablename"] for t in tables}
        found = []
        for t in tables:
            name = t["tablename"]
            for row in await conn.fetch(f'SELECT t::text AS row FROM "{name}" t'):
                if any(n in row["row"] for n in needles):
                    found.append(f"{name}: {row['row'][:200]}")
        return found
    finally:
        await conn.close()


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger at DEBUG, SQL statements and parameters included."""
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy.engine", "asyncpg", "grpc", "services"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


async def test_secret_only_reaches_the_data_plane(
    debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], registry: Registry
) -> None:
    run = await exercise(registry.stub)
    assert_watch_delivers_the_secret(run)

    assert run.seen.leaks(run.first, run.second) == []
    assert len(run.seen.blobs) > 30

    records = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in debug_logs.records
    )
    # SQL parameters and rows are in the log too: the stored (sealed) form shows up there.
    assert "$sealed" in debug_logs.text, "SQL was not logged at DEBUG: the check would be weak"
    assert run.first not in debug_logs.text and run.second not in debug_logs.text
    assert run.first not in records and run.second not in records
    out, err = capfd.readouterr()
    assert run.first not in out + err and run.second not in out + err

    assert await rows_containing(registry.database_url, run.first, run.second) == []
    # The search would find it: the instance row holds the other setting in clear.
    assert await rows_containing(registry.database_url, "http://127.0.0.1:9/c")


@pytest.fixture
async def registry_process(fresh_database: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Run `python -m services.registry` at DEBUG; yield its port and stderr lines so far."""
    env = {
        **os.environ,
        "EVENTFN_DATABASE_URL": fresh_database,
        "EVENTFN_REGISTRY_LISTEN": "127.0.0.1:0",
        "EVENTFN_STATE_DIR": str(tmp_path),
        "EVENTFN_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "EVENTFN_SERVICE_TOKEN": SERVICE,
        "EVENTFN_LOG_LEVEL": "DEBUG",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.registry",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if not port.done() and (m := re.search(r"registry listening on port (\d+)", line)):
                port.set_result(int(m.group(1)))
        if not port.done():
            port.set_exception(RuntimeError("registry exited:\n" + "".join(lines[-40:])))

    reader = asyncio.create_task(pump())
    try:
        yield {"port": await asyncio.wait_for(port, timeout=60), "lines": lines}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reader


async def test_secret_not_in_the_registry_process_stderr(
    registry_process: dict[str, Any], fresh_database: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry_process['port']}") as channel:
        run = await exercise(registry_pb2_grpc.RegistryStub(channel))
    assert_watch_delivers_the_secret(run)
    assert run.seen.leaks(run.first, run.second) == []
    log = "".join(registry_process["lines"])
    assert "DEBUG" in log, "the process did not log at DEBUG: the check would be weak"
    assert "config watcher 'secrets-test' connected" in log
    assert run.first not in log and run.second not in log
    assert await rows_containing(fresh_database, run.first, run.second) == []


def test_setting_types_cover_the_encrypted_flag() -> None:
    """The schema used here really declares apiKey encrypted (else the test proves nothing)."""
    (api_key,) = [s for s in SETTINGS if s.name == "apiKey"]
    assert api_key.encrypted and api_key.type == types_pb2.SETTING_TYPE_STRING


async def test_secret_stays_secret_when_a_version_drops_the_encrypted_flag(
    registry: Registry,
) -> None:
    """A value entered as a secret is never shown, even after the schema stops encrypting it.

    Otherwise a Functions Admin could save a version with `encrypted` off, and the next deploy
    would store the secret in clear and show it to every reader of the instance.
    """
    secret = f"sk_live_{uuid.uuid4().hex}"
    ws_id, token = await registry.workspace("Downgrade")
    owner = auth(token)
    stub = registry.stub
    parent = f"workspaces/{ws_id}"
    fn = await stub.CreateFunction(new_function(parent, "Hook", settings=SETTINGS), metadata=owner)
    src = await stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="Web")),
        metadata=owner,
    )
    ins = await stub.CreateInstance(
        new_instance(
            parent,
            fn.function.name,
            src.source.name,
            settings=struct(endpoint="http://127.0.0.1:9/hook", apiKey=secret),
        ),
        metadata=owner,
    )
    plain = [types_pb2.SettingDefinition() for _ in SETTINGS]
    for copy, original in zip(plain, SETTINGS, strict=True):
        copy.CopyFrom(original)
        copy.encrypted = False
    seen = Seen()
    seen.response(
        "SaveFunction deploy",
        await stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn.function.name,
                code=HANDLER,
                settings=plain,
                deploy_instances=[ins.instance.name],
            ),
            metadata=owner,
        ),
    )
    seen.response(
        "GetInstance",
        await stub.GetInstance(pb.GetInstanceRequest(name=ins.instance.name), metadata=owner),
    )
    leaks = (seen.leaks(secret), await rows_containing(registry.database_url, secret))
    assert leaks == ([], []), "responses and rows showing the secret"
