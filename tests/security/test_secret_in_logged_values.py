"""Secrets in what console.log writes of values other than strings: a logged object (its
strings as util.inspect writes them: JSON's escapes, `"` unescaped, `'` as `\\'`) and a logged
Buffer (hex bytes, the first 50 alone of a longer one). Each kept the secret whole:
`console.log(settings)` with a secret holding an apostrophe, the everyday debugging line,
logged it as it was."""

from __future__ import annotations

import pytest

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, pool

__all__ = ["pool"]


@pytest.mark.parametrize(
    "secret", ["hunter2'Pa55word!", 'Pa55"wo\\rd-Secret99', 'it\'s "quoted"\n']
)
async def test_a_secret_logged_inside_an_object_is_redacted(pool: RuntimePool, secret: str) -> None:
    code = """async function onTrack(event, settings) {
      console.log(settings);
      console.log('cfg', {key: settings.key});
      console.dir([settings.key]);
    }"""
    result = await invoke(pool, code, settings={"key": secret}, secrets=(secret,))
    assert len(result.logs) == 3
    for line in result.logs:
        assert "[REDACTED]" in line.message
        assert "Pa55" not in line.message and "hunter2" not in line.message
        assert "quoted" not in line.message


@pytest.mark.parametrize(
    "expr", ["Buffer.from(settings.key)", "Buffer.from(settings.key).toString('hex')"]
)
async def test_a_secret_logged_as_bytes_is_redacted(pool: RuntimePool, expr: str) -> None:
    secret = "sk_live_0123456789abcdefghij"
    code = f"async function onTrack(event, settings) {{ console.log({expr}) }}"
    result = await invoke(pool, code, settings={"key": secret}, secrets=(secret,))
    (line,) = result.logs
    assert "[REDACTED]" in line.message and "736b" not in line.message.replace(" ", "")


LONG = "sk_live_" + "0123456789abcdefghijKLMNOPQRSTUVWXYZ" * 2  # 80 bytes: a Buffer shows 50


@pytest.mark.parametrize(
    ("expr", "spelled"),
    [
        ("Buffer.from(settings.key)", LONG[:8].encode().hex(" ")),
        ("Buffer.from(settings.key).toString('hex')", LONG[:8].encode().hex()),
    ],
)
async def test_the_bytes_of_a_long_secret_are_redacted(
    pool: RuntimePool, expr: str, spelled: str
) -> None:
    code = f"async function onTrack(event, settings) {{ console.log({expr}) }}"
    result = await invoke(pool, code, settings={"key": LONG}, secrets=(LONG,))
    (line,) = result.logs
    assert "[REDACTED]" in line.message and spelled not in line.message
