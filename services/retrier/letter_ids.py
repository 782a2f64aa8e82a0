"""Dead letters' public ids: the DEAD message's sequence sealed, then the event's index.

DEAD is one stream for every workspace: its sequence numbers, shown, let a tenant count the
other tenants' dead letters (the steps between two of its own). A public id is the sequence
encrypted (one AES block under a key derived from the deployment's service token, with a
check word that refuses ids the deployment did not give) and, after a dot, the event's index
in its pack: `<pack>` names the whole pack, `<pack>.<index>` one event, as `42` and `42.0`
did. Ids change when the service token changes; list the letters again then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from services.retrier.dead_packs import BadDeadLetterId, LetterId

_LABEL = b"eventfn/dead-letter-ids/v1"
_CHECK = b"eventfn\x01"  # the block's second half: a forged id decrypts to anything else
_PACK_CHARS = 26  # base32 of one 16-byte block, without padding
_QUOTED = 40  # characters of a refused id quoted back


class LetterIds:
    """Give and read the public ids of dead letters under one deployment's key."""

    def __init__(self, key: bytes) -> None:
        self._cipher = Cipher(
            algorithms.AES(hmac.new(key, _LABEL, hashlib.sha256).digest()), modes.ECB()
        )

    @classmethod
    def from_secret(cls, secret: str | bytes) -> LetterIds:
        """Build from the deployment's service token."""
        return cls(secret.encode() if isinstance(secret, str) else secret)

    def show(self, letter: LetterId) -> str:
        """Return the public id of a letter (of a whole pack, when it has no index)."""
        sealer = self._cipher.encryptor()
        block = sealer.update(letter.seq.to_bytes(8, "big") + _CHECK) + sealer.finalize()
        pack = base64.b32encode(block).decode().rstrip("=").lower()
        return pack if letter.index is None else f"{pack}.{letter.index}"

    def read(self, text: str) -> LetterId:
        """Return the letter a public id names; refuse one this deployment did not give."""
        pack, dot, index = text.partition(".")
        quoted = repr(text) if len(text) <= _QUOTED else f"{text[:_QUOTED]!r}…"
        try:
            if len(pack) != _PACK_CHARS:
                raise ValueError(pack)
            block = base64.b32decode(pack.upper() + "======")
            opener = self._cipher.decryptor()
            plain = opener.update(block) + opener.finalize()
            if not hmac.compare_digest(plain[8:], _CHECK):
                raise ValueError(pack)
            seq = int.from_bytes(plain[:8], "big")
            position = int(index) if dot else None
        except (ValueError, binascii.Error):
            raise BadDeadLetterId(
                f"dead letter id {quoted} is not one this deployment gave; list the dead "
                "letters (`eventfn dead list`) for their ids"
            ) from None
        if seq < 1 or (position is not None and position < 0):
            raise BadDeadLetterId(f"dead letter id {quoted} is out of range")
        letter = LetterId(seq, position)
        if self.show(letter) != text:  # one spelling a letter: `00`, `1_0`, upper case, …
            raise BadDeadLetterId(
                f"dead letter id {quoted} is not written as the deployment gave it; copy it "
                "from `eventfn dead list`"
            )
        return letter
