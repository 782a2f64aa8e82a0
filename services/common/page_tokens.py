"""Opaque, sealed page tokens for keyset pagination (AIP-158), shared by every service.

A token carries the list it belongs to (method), the caller's scope (e.g. the workspace), a
digest of the request's filters and the sort key of the last item returned. It is sealed
with AES-GCM, so a token of another list, another workspace or other filters, and any token
the service did not make, is refused with INVALID_ARGUMENT instead of being trusted, and a
caller reads nothing in it: a sort key may be a row id numbered across every workspace,
whose steps would count the other tenants' rows. Pages continue after the last key, not at
an offset: an item that exists during the whole listing is returned exactly once, whatever
is written between two pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from services.common.errors import InvalidArgument

_VERSION = 2
_LABEL = b"eventfn/page-tokens/v2"
_NONCE_BYTES = 12
_DIGITS = 20  # of the largest key number (2**64 - 1)
_SKIPPED = ("page_token", "page_size")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def filters_digest(request: Message) -> str:
    """Digest the request without its page token and size (the filters a token is bound to)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in _SKIPPED:
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:32]


class PageTokens:
    """Issue and read page tokens sealed with one service key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hmac.new(key, _LABEL, hashlib.sha256).digest())
        # Tokens the release before made (signed, not sealed) are read during an upgrade:
        # replicas of both serve one listing's pages. Not made any more.
        self._v1_key = hmac.new(key, b"eventfn/page-tokens/v1", hashlib.sha256).digest()

    @classmethod
    def from_secret(cls, secret: str | bytes) -> PageTokens:
        """Build from a deployment secret (the service token, the secret key)."""
        return cls(secret.encode() if isinstance(secret, str) else secret)

    def issue(self, method: str, scope: str, request: Message, last: list[Any]) -> str:
        """Make the token of the page that follows the item whose sort key is `last`."""
        body = orjson.dumps(
            {"v": _VERSION, "m": method, "s": scope, "q": filters_digest(request), "k": last}
        )
        # As long whatever the key's numbers: a sealed text is as long as the plain one, and
        # the number of digits of a row id numbered across every workspace is its size.
        body += b" " * sum(_DIGITS - len(str(v)) for v in last if type(v) is int)
        nonce = os.urandom(_NONCE_BYTES)
        return _b64(nonce + self._aead.encrypt(nonce, body, _LABEL))

    def _opened(self, token: str) -> bytes:
        """Return a token's body (its seal or, for the release before's, its signature
        checked); raise ValueError or InvalidTag for any other text."""
        if "." in token:  # `<body>.<signature>`, both base64: the release before's
            body_text, _, signature = token.partition(".")
            body = _unb64(body_text)
            made = hmac.new(self._v1_key, body, hashlib.sha256).digest()[:16]
            if not hmac.compare_digest(_unb64(signature), made):
                raise ValueError("signature")
            return body
        sealed = _unb64(token)
        return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _LABEL)

    def read(self, method: str, scope: str, request: Message) -> list[Any] | None:
        """Return the last key the request's page_token continues after (None: first page)."""
        token = getattr(request, "page_token", "")
        if not token:
            return None
        try:
            payload = orjson.loads(self._opened(token))
        except (ValueError, InvalidTag, orjson.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict) or payload.get("v") not in (1, _VERSION):
            raise InvalidArgument.field(
                "page_token", "is not a token this service made; start again without one"
            )
        if payload.get("m") != method or payload.get("s") != scope:
            raise InvalidArgument.field(
                "page_token", "belongs to another list; start this list without a token"
            )
        if payload.get("q") != filters_digest(request):
            raise InvalidArgument.field(
                "page_token",
                "was made for other filters; send the same filters as the first page, or "
                "start again without a token",
            )
        last = payload.get("k")
        if not isinstance(last, list):
            raise InvalidArgument.field("page_token", "is not a token this service made")
        return last
