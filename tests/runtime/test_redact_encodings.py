"""Redaction of a secret in the spellings encoders give it: percent (URI component, URI, form),
JSON string escapes, base64 (standard and URL-safe, inside longer data, padded or not)."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import quote, quote_plus, urlencode

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.runtime.redact import (
    MIN_BASE64_LENGTH,
    MIN_SECRET_LENGTH,
    REDACTED,
    SECRET_CHUNK,
    compile_secrets,
    cut_margin,
    redact,
)

URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as it is
URI_SAFE = URI_COMPONENT_SAFE + ";,/?:@&=+$#"  # and encodeURI
# Any character a setting can hold (valid UTF-8), with the ones encoders rewrite made likely.
CHARS = st.one_of(st.characters(codec="utf-8"), st.sampled_from(" \"\\/+%=&?:\n\t\x00\x7fé€😀'"))
SECRETS = st.text(CHARS, min_size=MIN_SECRET_LENGTH, max_size=24)
AROUND = st.text(CHARS, max_size=30)


def assert_gone(spelling: str, out: str) -> None:
    # Only what lies outside the markers is kept text; the marker's own characters never
    # spell a secret (a secret such as "D]xy" can end up next to one).
    kept = out.split(REDACTED)
    assert all(spelling not in part for part in kept), (spelling, out)


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), text)


@given(SECRETS, AROUND, AROUND, st.sampled_from(["", URI_COMPONENT_SAFE, URI_SAFE]), st.booleans())
def test_percent_encoded_secrets_are_redacted(
    secret: str, before: str, after: str, safe: str, lower: bool
) -> None:
    spell = (lambda s: lower_hex(quote(s, safe=safe))) if lower else (lambda s: quote(s, safe=safe))
    pattern = compile_secrets([secret])
    assert_gone(spell(secret), redact(before + spell(secret) + after, pattern))
    assert_gone(spell(secret), redact(spell(before + secret + after), pattern))


@given(SECRETS, AROUND, AROUND)
def test_form_encoded_secrets_are_redacted(secret: str, before: str, after: str) -> None:
    pattern = compile_secrets([secret])
    out = redact(urlencode({"k": before + secret + after, "n": "1"}), pattern)
    assert_gone(quote_plus(secret, safe=""), out)
    assert_gone(quote_plus(secret), redact(before + quote_plus(secret) + after, pattern))


@given(SECRETS, AROUND, AROUND, st.booleans())
def test_json_escaped_secrets_are_redacted(
    secret: str, before: str, after: str, ascii_only: bool
) -> None:
    pattern = compile_secrets([secret])
    escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
    out = redact(json.dumps({"log": before + secret + after}, ensure_ascii=ascii_only), pattern)
    assert_gone(escaped, out)
    as_js = orjson.dumps(before + secret + after).decode()  # JSON.stringify's escapes
    assert_gone(orjson.dumps(secret).decode()[1:-1], redact(as_js, pattern))


def inspected(text: str) -> str:
    """Return a string as the bundled util.inspect writes it inside a logged object."""
    escaped = orjson.dumps(text).decode()[1:-1]
    return "'" + escaped.replace("'", "\\'").replace('\\"', '"') + "'"


@given(SECRETS, AROUND, AROUND)
def test_secrets_in_a_logged_object_are_redacted(secret: str, before: str, after: str) -> None:
    pattern = compile_secrets([secret])
    out = redact("{ key: " + inspected(before + secret + after) + " }", pattern)
    assert_gone(inspected(secret)[1:-1], out)


@given(SECRETS, st.binary(max_size=7), st.binary(max_size=7), st.booleans())
def test_hex_of_data_around_a_secret_is_redacted(
    secret: str, before: bytes, after: bytes, spaced: bool
) -> None:
    # As Node writes bytes: toString('hex'), and a logged Buffer's bytes apart.
    utf8 = secret.encode("utf-8", "surrogatepass")
    assume(not spaced or len(before + utf8 + after) <= 50)  # a Buffer shows 50 bytes
    spell = (lambda data: data.hex(" ")) if spaced else bytes.hex
    out = redact(spell(before + utf8 + after), compile_secrets([secret]))
    assert_gone(spell(utf8), out)


@given(
    SECRETS,
    st.binary(max_size=7),
    st.binary(max_size=7),
    st.sampled_from(["utf-8", "latin-1"]),
    st.booleans(),
    st.booleans(),
)
def test_base64_of_data_around_a_secret_is_redacted(
    secret: str, prefix: bytes, suffix: bytes, codec: str, url_safe: bool, padded: bool
) -> None:
    try:
        data = secret.encode(codec)
    except UnicodeEncodeError:
        assume(False)
        raise
    full = base64.b64encode(prefix + data + suffix).decode()
    # The characters made of the secret's bits alone; one each side also carries a neighbour's.
    inner = full[-(-8 * len(prefix) // 6) : 8 * (len(prefix) + len(data)) // 6]
    if url_safe:
        full, inner = (x.replace("+", "-").replace("/", "_") for x in (full, inner))
    if not padded:
        full = full.rstrip("=")
    out = redact(f"Authorization: Basic {full}", compile_secrets([secret]))
    if len(inner) >= MIN_BASE64_LENGTH:
        assert_gone(inner, out)


@given(SECRETS)
def test_every_secret_of_five_bytes_or_more_is_matched_in_base64(secret: str) -> None:
    assume(len(secret.encode()) >= 5)
    pattern = compile_secrets([secret])
    for size in range(3):
        text = base64.b64encode(bytes(size) + secret.encode()).decode()
        assert REDACTED in redact(text, pattern), (secret, size, text)


def spellings(secret: str) -> list[str]:
    return [
        secret,
        quote(secret, safe=""),
        lower_hex(quote(secret, safe=URI_COMPONENT_SAFE)),
        quote(secret, safe=URI_SAFE),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        orjson.dumps(secret).decode()[1:-1],
    ]


@given(SECRETS)
def test_the_whole_spelling_is_replaced(secret: str) -> None:
    assume(not {"<", ">"} & set(secret))
    pattern = compile_secrets([secret])
    for spelling in spellings(secret):
        assert redact(f"<{spelling}>", pattern) == f"<{REDACTED}>", spelling


# A pattern of several secrets compiles in tens of ms, 280 ms on a busy machine: no deadline.
@settings(deadline=None)
@given(st.lists(SECRETS, min_size=1, max_size=5), st.data())
def test_each_of_several_secrets_is_redacted_in_every_spelling(
    secrets: list[str], data: st.DataObject
) -> None:
    secret = data.draw(st.sampled_from(secrets))
    pattern = compile_secrets(secrets)
    for spelling in spellings(secret):
        assert_gone(spelling, redact(f"x={spelling}&y=1", pattern))


def test_short_values_and_short_base64_are_left_alone() -> None:
    # A four-byte secret's base64 has four or five characters of its own: too few to tell it
    # from ordinary base64, so it is matched as text only.
    pattern = compile_secrets(["abc", "key1"])
    assert redact("abc and key2, a2V5MQ==", pattern) == "abc and key2, a2V5MQ=="
    assert redact("key1, key1", pattern) == f"{REDACTED}, {REDACTED}"


@pytest.mark.parametrize(
    ("secret", "text"),
    [
        ("\\" * 22 + "x", "\\" * 80),
        ('\\"' * 11 + "x", '\\\\\\"' * 30),
        ("%25" * 11 + "x", "%2525" * 30),
        ("\\u005c" * 8 + "x", "\\\\u005c" * 30),
        ("+ " * 11 + "x", "+%20%2B" * 30),
    ],
    ids=["backslashes", "escaped-quotes", "percent-25", "u-escapes", "plus-space"],
)
def test_text_that_almost_spells_a_secret_takes_linear_time(secret: str, text: str) -> None:
    # Were one way of writing a character the start of another ('\\' and '\'), each of the
    # secret's backslashes could be read two ways and a failing match would try them all.
    pattern = compile_secrets([secret])
    start = time.perf_counter()
    assert redact(text, pattern) == text
    assert time.perf_counter() - start < 0.5


@settings(deadline=None)
@given(SECRETS)
def test_the_cut_margin_covers_every_spelling_of_a_secret(short: str) -> None:
    # A text cut before keeps nothing of its last cut_margin characters: no spelling of a
    # secret may be longer (base64 of a 3-byte character with `+` and `/` percent-encoded was).
    secret = short * (SECRET_CHUNK // len(short))  # one chunk, past CUT_MARGIN in some spellings
    utf8 = secret.encode("utf-8", "surrogatepass")
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass")
    longest = max(
        len(quote(json.dumps(secret)[1:-1], safe="")),
        len(quote(inspected(secret), safe="")),
        len(quote(base64.b64encode(b"\0" + escaped).decode(), safe="")),
        len(quote(base64.b64encode(b"\0" + utf8).decode(), safe="")),
        len(utf8.hex(" ")) + 1,
    )
    assert cut_margin([secret]) >= longest


@settings(deadline=None, max_examples=4)
@given(
    st.text("ab'\"\\é😀", min_size=SECRET_CHUNK + 1, max_size=2 * SECRET_CHUNK + 8),
    AROUND,
    AROUND,
)
def test_a_long_secret_is_redacted_whole_in_chunks(secret: str, before: str, after: str) -> None:
    out = redact(before + secret + after, compile_secrets([secret]))
    assert_gone(secret[:MIN_SECRET_LENGTH], out.removeprefix(before))
    assert out.endswith(REDACTED + after) or secret.endswith(after)
