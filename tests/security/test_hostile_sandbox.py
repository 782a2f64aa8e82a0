"""A hostile function attacks the runtime from inside its context: it can neither reach the
host interface nor make the worker trust a forged report, and whatever it throws or logs is
bounded (issue 10, items 2, 6, 8)."""

from __future__ import annotations

import time

import pytest

from services.runtime import OutcomeKind, RuntimePool
from services.runtime.report import MAX_ERROR_MESSAGE, MAX_ERROR_STACK
from tests.runtime.conftest import invoke, new_key, value_of

TRACK = {"type": "track", "event": "e"}
# Replace the report (the object with a `done` key) as JSON.stringify serialises it.
FORGE = (
    "Object.prototype.toJSON = function () { "
    "  if (!('done' in this)) return this; delete Object.prototype.toJSON; return %s }"
)


async def test_the_host_interface_is_out_of_reach(strict_pool: RuntimePool) -> None:
    code = """
    const guesses = [undefined, '', 'x'.repeat(32), '0'.repeat(32), {toString() { return 'a' }}];
    const atLoad = guesses.map((g) => __eventfn__(g) === undefined);
    __eventfn__ = () => 'replaced';
    let redefined;
    try { Object.defineProperty(globalThis, '__eventfn__', {value: 1}); redefined = true }
    catch (e) { redefined = false }
    async function onTrack() {
      const frames = [];
      Error.prepareStackTrace = (err, callsites) => callsites;
      function walk() {
        for (const c of new Error('probe').stack) {
          let self, fn;
          try { self = c.getThis() } catch (e) { self = 'threw' }
          try { fn = c.getFunction() } catch (e) { fn = 'threw' }
          frames.push([c.getFunctionName(), self === undefined, fn === undefined]);
        }
      }
      walk();
      Error.prepareStackTrace = undefined;
      let caller;
      try { caller = onTrack.caller } catch (e) { caller = 'threw' }
      return {atLoad, now: guesses.map((g) => __eventfn__(g) === undefined),
              replaced: __eventfn__() === 'replaced', redefined,
              frames: frames.slice(2), caller: caller === null || caller === 'threw'};
    }"""
    value = value_of(await invoke(strict_pool, code))
    assert isinstance(value, dict)
    # The gate opens for the engine's secret token only, and cannot be replaced.
    assert value["atLoad"] == value["now"] == [True] * 5
    assert (value["replaced"], value["redefined"]) == (False, False)
    assert value["caller"] is True
    # The runtime's own frames below the handler give up neither receiver nor function.
    assert value["frames"], value
    assert all(self_hidden and fn_hidden for _, self_hidden, fn_hidden in value["frames"]), value


async def test_the_gate_cannot_be_shadowed(strict_pool: RuntimePool) -> None:
    result = await invoke(strict_pool, "let __eventfn__ = () => 1; async function onTrack() {}")
    assert result.outcomes[0].kind == OutcomeKind.FAILURE
    assert "already been declared" in (result.outcomes[0].message or "")


async def test_a_timer_or_a_global_getter_cannot_reach_it_either(strict_pool: RuntimePool) -> None:
    code = """
    let seen = [];
    function look() {
      Error.prepareStackTrace = (err, cs) => cs;
      for (const c of new Error('x').stack) {
        try { const t = c.getThis(); if (t && typeof t.poll === 'function') seen.push('host') }
        catch (e) {}
      }
      Error.prepareStackTrace = undefined;
    }
    Object.defineProperty(globalThis, 'onIdentify', { get() { look(); return undefined } });
    async function onTrack() {
      await new Promise((ok) => setTimeout(() => { look(); ok() }, 1));
      return seen;
    }"""
    assert value_of(await invoke(strict_pool, code)) == []


@pytest.mark.parametrize(
    ("forgery", "why"),
    [
        # A forged report claiming thousands of delivered outcomes for one event.
        (
            FORGE % "{done: true, fetches: [], timer: -1, results: new Array(300000).fill(0), "
            "logs: [], logsDropped: 0}",
            "results for 1 events",
        ),
        # A forged report whose fetch requests skip fetch()'s own checks.
        (FORGE % "{done: false, timer: -1, fetches: [{id: 1, url: 5}]}", "not strings"),
        ("JSON.stringify = () => 'not json'", None),
    ],
)
async def test_forged_reports_fail_the_invocation_at_once(
    strict_pool: RuntimePool, forgery: str, why: str | None
) -> None:
    code = f"async function onTrack() {{ {forgery}; return 1 }}"
    started = time.monotonic()
    result = await invoke(strict_pool, code)
    outcome = result.outcomes[0]
    if why is None:  # captured intrinsics: replacing the global changes nothing
        assert outcome.kind == OutcomeKind.DELIVERED
        return
    assert len(result.outcomes) == 1
    assert (outcome.kind, outcome.error_type) == (OutcomeKind.FAILURE, "RuntimeTampered")
    assert why in (outcome.message or "")
    assert time.monotonic() - started < 2


async def test_a_forged_log_flood_is_cut_to_the_log_cap(strict_pool: RuntimePool) -> None:
    code = """async function onTrack() {
      Array.prototype.toJSON = undefined;
      Object.prototype.toJSON = function () {
        if (!('done' in this)) return this;
        delete Object.prototype.toJSON;
        return {done: true, fetches: [], timer: -1, results: [0],
                logs: [['log', 'x'.repeat(2 * 1024 * 1024)]], logsDropped: 0, values: [null]};
      };
    }"""
    result = await invoke(strict_pool, code)
    assert result.outcomes[0].kind == OutcomeKind.DELIVERED
    assert sum(len(line.message) for line in result.logs) <= 64 * 1024
    assert result.logs_truncated


async def test_console_floods_are_capped(strict_pool: RuntimePool) -> None:
    code = """async function onTrack() {
      for (let i = 0; i < 20000; i++) console.log('y'.repeat(1000));
    }"""
    result = await invoke(strict_pool, code)
    assert result.outcomes[0].kind == OutcomeKind.DELIVERED
    assert sum(len(line.message) for line in result.logs) <= 64 * 1024
    assert result.logs_truncated


async def test_huge_error_messages_and_stacks_are_capped(strict_pool: RuntimePool) -> None:
    code = """async function onTrack() {
      const e = new Error('m'.repeat(8 * 1024 * 1024));
      e.stack = 's'.repeat(8 * 1024 * 1024);
      throw e;
    }"""
    events = [TRACK] * 5
    result = await invoke(strict_pool, code, events)
    for outcome in result.outcomes:
        assert outcome.kind == OutcomeKind.FAILURE
        assert len(outcome.message or "") <= MAX_ERROR_MESSAGE
        assert len(outcome.stack or "") <= MAX_ERROR_STACK


@pytest.mark.parametrize(
    "throwing",
    [
        "return {toJSON() { throw new Error('no') }}",
        "return {toJSON() { throw new Error('no') }, [Symbol.toPrimitive]() { throw 1 }}",
        "throw {toJSON() { throw new Error('no') }, [Symbol.toPrimitive]() { throw 1 }}",
        "const e = new Error('x'); Object.defineProperty(e, 'name', {get() { throw 1 }}); throw e",
        "const e = new Error('x'); Object.defineProperty(e, 'message', {get() { throw 1 }}); "
        "throw e",
        "throw Object.create(null)",
        "const p = Promise.resolve(); Object.defineProperty(p, 'then', {get() { throw 2 }}); "
        "return p",
    ],
)
async def test_values_that_refuse_to_be_described_end_at_once(
    strict_pool: RuntimePool, throwing: str
) -> None:
    started = time.monotonic()
    result = await invoke(strict_pool, f"async function onTrack() {{ {throwing} }}", timeout_s=5)
    assert result.outcomes[0].error_type != "Timeout", result.outcomes[0]
    assert time.monotonic() - started < 2


async def test_prototype_pollution_stays_in_its_own_context(strict_pool: RuntimePool) -> None:
    polluter = """async function onTrack() {
      Object.prototype.polluted = 'yes';
      Array.prototype.map = () => 'hijacked';
      JSON.parse = () => ({});
      return 1;
    }"""
    victim = """async function onTrack() {
      return [({}).polluted === undefined, [1].map((x) => x + 1), JSON.parse('[1]')];
    }"""
    await invoke(strict_pool, polluter, key="tenant-a:1")
    assert value_of(await invoke(strict_pool, victim, key="tenant-b:1")) == [True, [2], [1]]


async def test_instances_of_one_function_never_share_globals(strict_pool: RuntimePool) -> None:
    # The executor keys contexts by instance: a lazily created "client" holds one
    # instance's key and must never serve another instance.
    code = """let client;
    async function onTrack(event, settings) {
      client = client || {key: settings.apiKey};
      console.log('using', client.key);
      return client.key;
    }"""
    a, b = f"ins_a:{new_key()}", f"ins_b:{new_key()}"
    first = await invoke(strict_pool, code, key=a, settings={"apiKey": "sk_A_secret"})
    second = await invoke(
        strict_pool, code, key=b, settings={"apiKey": "sk_B_secret"}, secrets=("sk_B_secret",)
    )
    assert value_of(first) == "sk_A_secret"
    assert second.values == ["[REDACTED]"]
    assert [line.message for line in second.logs] == ["using [REDACTED]"]
