"""Remove secret setting values from text that leaves the runtime (logs, request traces).

A function rarely sends a secret as it is: it URL-encodes it into a query, base64s it into a
Basic Authorization header, JSON-escapes it in a logged object. So each secret is matched in
those spellings too, all in one pattern:

- percent-encoding as encodeURIComponent, encodeURI, URLSearchParams and urllib write it (each
  character as itself or as %XX of its UTF-8 bytes, either case; a space also as '+'; a
  '%' only as %25);
- JSON string escapes as JSON.stringify, orjson and json.dumps write them (\\", \\\\, \\/,
  \\n and the other short forms, \\uXXXX in either case, surrogate pairs), also percent-encoded,
  and as util.inspect writes a string in a logged object (`"` unescaped, `'` as \\');
- base64, standard or URL-safe, padded or not, of the secret's UTF-8, of its Latin-1 (btoa)
  and of its JSON-escaped form, anywhere inside longer base64 (see `_base64_parts`);
- its UTF-8 bytes in hex as Node writes them, with or without a space between bytes (a
  logged Buffer, its first 50 alone when it has more).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
import string
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"
# Values this short would redact ordinary words; encrypted settings are keys and tokens.
MIN_SECRET_LENGTH = 4
# Base64 characters of a secret's own, fewest matched: 36 bits, so a chance hit in random
# base64 comes once in ~6.9e10 characters. Every alignment of a secret of five bytes or more
# has this many; a four-byte secret (4 or 5 characters) is matched as text only.
MIN_BASE64_LENGTH = 6
# The path and query of a secret URL are matched alone from this length on (a webhook's
# `/services/T…/B…/token`): shorter ones (`/api`) are not its secret part.
MIN_URL_TAIL_LENGTH = 16
# A text the runtime caps (an error's message, a log line) comes from the context this much
# longer than its cap, so a secret spelled across the cap is still whole when it is redacted
# (`redact_cut`); a cut ahead of redaction left its first characters.
CUT_MARGIN = 4096
# A secret longer than this is matched by chunks of it (`_matched`).
SECRET_CHUNK = 1024

# No percent-encoder escapes these (RFC 3986 unreserved, but '~', which some do).
_NEVER_PERCENT = frozenset(string.ascii_letters + string.digits + "-_.")
# What follows the backslash of a JSON short escape.
_JSON_SHORT = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "\b": "b",
    "\f": "f",
    "\n": "n",
    "\r": "r",
    "\t": "t",
}

# One way to write a character: its first character, literal, and a pattern for the rest.
# Every alternative then starts with a literal, so the compiled search skips ahead to the
# characters a spelling can start with instead of trying every alternative at every offset.
#
# The ways of writing one character never start one another ('\\' is not also a bare '\',
# '%25' not also a bare '%'): text then reads one way only, so a failing match costs time in
# proportion to the secret's length, never exponential in it.
_Form = tuple[str, str]
# A character as a spelling writes it: one character, or a hex digit's two cases ("cC").
_Atom = str


def _hex(byte: int) -> str:
    """Return a pattern for `byte` as two hex digits of either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")


def _group(forms: list[_Form]) -> str:
    """Return a pattern matching any of `forms`, in order."""
    texts = [re.escape(first) + rest for first, rest in forms]
    return texts[0] if len(texts) == 1 else "(?:" + "|".join(texts) + ")"


def _as_is(atom: _Atom) -> list[_Form]:
    """Return an atom written as it is."""
    return [(ch, "") for ch in atom]


def _percent(atom: _Atom) -> list[_Form]:
    """Return an atom as percent-encoders leave or write it (a space also as '+'); a '%' is
    always %25, as every encoder writes it."""
    if len(atom) > 1 or atom in _NEVER_PERCENT:
        return _as_is(atom)
    raw = atom.encode("utf-8", "surrogatepass")
    forms = [("%", _hex(raw[0]) + "".join("%" + _hex(b) for b in raw[1:]))]
    if atom != "%":
        forms.append((atom, ""))
    if atom == " ":
        forms.append(("+", ""))
    return forms


def _json(ch: str) -> list[list[_Atom]]:
    """Return the ways JSON encoders write `ch` inside a string, and util.inspect (what
    console.log writes a string inside an object with): JSON's, with `\\"` back as `"` and
    `'` as `\\'`."""
    code = ord(ch)
    if ch == "'":
        return [[ch], ["\\", ch]]
    if 0x20 <= code < 0x7F and ch not in _JSON_SHORT:
        return [[ch]]
    if code < 0x10000:
        units = [code]
    else:
        units = [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
    digits = [d + d.upper() if d.isalpha() else d for u in units for d in f"{u:04x}"]
    escaped = [a for i in range(len(units)) for a in ["\\", "u", *digits[4 * i : 4 * i + 4]]]
    out = [escaped]
    if ch in _JSON_SHORT:
        out.append(["\\", _JSON_SHORT[ch]])
    if code >= 0x7F or ch in '/"':  # left as it is by some encoders
        out.append([ch])
    return out


def _text(secret: str, *, json_escaped: bool, percent: bool) -> tuple[list[list[_Form]], int]:
    """Return a text spelling of `secret` as per-character forms, with the least it matches."""
    write = _percent if percent else _as_is
    chars: list[list[_Form]] = []
    length = 0
    for ch in secret:
        spellings = _json(ch) if json_escaped else [[ch]]
        forms: list[_Form] = []
        for head, *tail in spellings:
            rest = "".join(_group(write(a)) for a in tail)
            forms += [(first, more + rest) for first, more in write(head)]
        chars.append(forms)
        length += min(map(len, spellings))
    return chars, length


# Either alphabet, and the escapes a base64 string gets inside a URL or JSON.
_BASE64_CHAR = {
    "+": [("%", "2[bB]"), ("+", ""), ("-", "")],
    "/": [("%", "2[fF]"), ("\\", "/"), ("/", ""), ("_", "")],
}


def _base64_parts(data: bytes) -> list[str]:
    """Return the base64 characters made of `data`'s bits alone, at each offset modulo 3.

    Inside longer data, `data` starts at offset 0, 1 or 2 of a 3-byte group; its first and
    last characters there also carry a neighbour's bits, so they are left out.
    """
    parts = []
    for offset in range(3):
        full = base64.b64encode(bytes(offset) + data).decode()
        part = full[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
        if len(part) >= MIN_BASE64_LENGTH:
            parts.append(part)
    return parts


def _literal(text: str) -> tuple[list[list[_Form]], int]:
    """Return a spelling that is `text` exactly."""
    return [[(c, "")] for c in text], len(text)


# The bytes a logged Buffer shows, then " ...": a longer secret's first ones alone.
BUFFER_SHOWN_BYTES = 50


def _byte_spellings(data: bytes) -> list[tuple[list[list[_Form]], int]]:
    """Return `data` in hex as Node writes bytes: `toString('hex')`, and a logged Buffer (bytes
    apart, its first 50 alone when it has more). (Not in decimal, a Buffer's JSON: the
    longest spelling, which doubled the time to build a long secret's pattern.)"""
    shown = data.hex(" ")
    if len(data) > BUFFER_SHOWN_BYTES:
        shown = data[:BUFFER_SHOWN_BYTES].hex(" ") + " ..."
    return [_literal(data.hex()), _literal(shown)]


def _spellings(secret: str) -> list[tuple[list[list[_Form]], int]]:
    """Return the spellings of `secret` as per-character forms, with the least they match."""
    # Percent-encoded (or as it is), and JSON-escaped then percent-encoded (or not). A bare
    # '%' is never taken for an encoded one, so a secret with one is also matched as it is.
    out = [_text(secret, json_escaped=j, percent=True) for j in (False, True)]
    if "%" in secret:
        out += [_text(secret, json_escaped=j, percent=False) for j in (False, True)]
    encoded = {secret.encode("utf-8", "surrogatepass")}
    encoded.add(json.dumps(secret, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass"))
    if max(map(ord, secret)) < 0x100:
        encoded.add(secret.encode("latin-1"))  # btoa's bytes
    out += _byte_spellings(secret.encode("utf-8", "surrogatepass"))
    for data in encoded:
        for part in _base64_parts(data):
            out.append(([_BASE64_CHAR.get(c, [(c, "")]) for c in part], len(part)))
    return out


def _rewritten(secret: str) -> set[str]:
    """Return `secret` as fetch may rewrite it: lowered (a key used as a host name); without
    the white space around it; a URL as the WHATWG parser writes it (scheme and host lowered,
    the host in punycode, `\\` as `/`, dot segments resolved, no default port, `/` for an empty
    path), and its path and query alone when long enough to be its secret part (a webhook's
    token)."""
    trimmed = secret.strip()
    out = {secret, trimmed, secret.lower()}
    try:
        parts = urlsplit(trimmed.replace("\\", "/"))
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return out
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return out
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}" if userinfo else host
    path = _resolved(parts.path)
    out.add(urlunsplit((scheme, netloc, path or "/", parts.query, parts.fragment)))
    for tail in (parts.path, path):
        tail = urlunsplit(("", "", tail, parts.query, ""))
        if len(tail) >= MIN_URL_TAIL_LENGTH:
            out.add(tail)
    return out


def _resolved(path: str) -> str:
    """Return a URL path with its `.` and `..` segments resolved, as the WHATWG parser does."""
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def _matched(secrets: Iterable[str]) -> frozenset[str]:
    """Return the texts matched for `secrets`: their rewritten forms, a longer one in chunks
    of SECRET_CHUNK characters. A match costs up to its length at each place it almost
    matches: a secret of 50,000 'a's and a 'b' made a 64 KB log take 2 s to redact, and its
    pattern 2.3 s to build."""
    return _matched_of(tuple(secrets))  # the worker asks on every reply


@functools.lru_cache(maxsize=256)
def _matched_of(secrets: tuple[str, ...]) -> frozenset[str]:
    out = set()
    for value in (v for s in secrets for v in _rewritten(s)):
        # Chunks one after another, as a text holding the secret is matched: a short last
        # one joins the one before.
        ends = [*range(SECRET_CHUNK, len(value) - MIN_SECRET_LENGTH + 1, SECRET_CHUNK)]
        bounds = [0, *ends, len(value)]
        out.update(value[a:b] for a, b in itertools.pairwise(bounds))
    return frozenset(v for v in out if len(v) >= MIN_SECRET_LENGTH)


def compile_secrets(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """Build one pattern matching any secret in any of its spellings (longest first), or None
    when there are none."""
    return _compile(_matched(secrets))


@functools.lru_cache(maxsize=256)
def _compile(secrets: frozenset[str]) -> re.Pattern[str] | None:
    # Built once per set of secrets: the worker asks on every reply.
    if not secrets:
        return None
    by_first: dict[str, dict[str, int]] = {}
    for secret in secrets:
        for chars, length in _spellings(secret):
            tail = "".join(_group(forms) for forms in chars[1:])
            for first, rest in chars[0]:
                rests = by_first.setdefault(first, {})
                rests[rest + tail] = max(length, rests.get(rest + tail, 0))
    branches = []
    for first in sorted(by_first):
        rests = by_first[first]
        ordered = sorted(rests, key=lambda r: (-rests[r], r))  # longest first
        branches.append(re.escape(first) + "(?:" + "|".join(ordered) + ")")
    return re.compile("|".join(branches))


def redact(text: str, pattern: re.Pattern[str] | None) -> str:
    """Replace every secret in `text` with a marker."""
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def _longest_spelling(ch: str) -> int:
    """Return the most characters any spelling writes `ch` in: each UTF-8 byte percent-encoded
    or in hex with a space (3), `\\'` percent-encoded (`%5C%27`), a `\\uXXXX` escape
    percent-encoded (`%5Cu0022`) for each UTF-16 unit, or base64 of its JSON escape with `+`
    and `/` percent-encoded (4 a byte)."""
    code = ord(ch)
    utf8 = len(ch.encode("utf-8", "surrogatepass"))
    escaped = len(json.dumps(ch, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
    most = max(4 * utf8, 4 * escaped, 6 if ch == "'" else 0)
    if code < 0x20 or code >= 0x7F or ch in _JSON_SHORT:
        most = max(most, 8 * (2 if code > 0xFFFF else 1))
    return most


@functools.lru_cache(maxsize=256)
def _margin(matched: frozenset[str]) -> int:
    longest = (sum(map(_longest_spelling, v)) for v in matched)
    return max(CUT_MARGIN, max(longest, default=0))


def cut_margin(secrets: Iterable[str]) -> int:
    """Return how far past a cap a text must reach for no cut to split a secret's spelling:
    CUT_MARGIN, or a longer secret's longest spelling (of a chunk, 5 KB at most)."""
    return _margin(_matched(secrets))


def redact_cut(
    text: str,
    cap: int,
    pattern: re.Pattern[str] | None,
    *,
    cut_before: bool = False,
    margin: int = CUT_MARGIN,
) -> str:
    """Redact `text` and cut it to at most `cap` characters, an ellipsis last when cut.

    The cut never splits a secret: one spelled across it is redacted whole first (the text
    must then reach CUT_MARGIN past the cap, as the runtime's JS side sends it), and cutting
    the redacted text leaves no secret's beginning, as every whole one is gone. A text that
    was cut before for a cap of its own (`cut_before`, or as it reaches CUT_MARGIN past the
    cap), which redaction may have moved (a log line's room is what the lines before it took
    unredacted), keeps nothing of its last `margin` characters, where a secret's beginning
    may be (`cut_margin`).
    """
    if cut_before or len(text) >= cap + CUT_MARGIN:
        cap = min(cap, len(text) - margin)
        if cap < 1:
            return "…"
    if len(text) <= cap:
        return redact(text, pattern)
    end = cap - 1
    if pattern is not None:
        # A match starting before `end` ends within `margin` of it: nothing past that is read
        # (a returned string of 32 MB was searched whole).
        pos = 0
        while (match := pattern.search(text, pos, end + margin)) and match.start() < end:
            end = max(end, match.end())
            pos = match.end()
    return redact(text[:end], pattern)[: cap - 1] + "…"
