"""Encryption at rest of encrypted setting values (AES-256-GCM from `cryptography`)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASK = "••••••••"
_PREFIX = "v1:"
SEALED_KEY = "$sealed"


def load_or_create_key(explicit: str | None, key_file: Path) -> bytes:
    """Return the 32-byte key given in settings (base64), else the state-dir key, creating it."""
    if explicit:
        key = base64.b64decode(explicit)
        if len(key) != 32:
            raise ValueError("EVENTFN_SECRET_KEY must be 32 bytes, base64-encoded")
        return key
    if key_file.exists():
        return base64.b64decode(key_file.read_text().strip())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode())
    return key


class SecretBox:
    """Seal and open setting values, bound to their instance and setting name."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, value: object, *, instance_id: str, name: str) -> dict[str, str]:
        """Encrypt a JSON-able value into the stored `{"$sealed": ...}` form."""
        import orjson

        nonce = os.urandom(12)
        aad = f"{instance_id}/{name}".encode()
        ct = self._aead.encrypt(nonce, orjson.dumps(value), aad)
        return {SEALED_KEY: _PREFIX + base64.b64encode(nonce + ct).decode()}

    def open(self, sealed: dict[str, str], *, instance_id: str, name: str) -> object:
        """Decrypt a stored sealed value; raise ValueError when it was tampered with."""
        import orjson

        raw = base64.b64decode(sealed[SEALED_KEY].removeprefix(_PREFIX))
        aad = f"{instance_id}/{name}".encode()
        try:
            return orjson.loads(self._aead.decrypt(raw[:12], raw[12:], aad))
        except InvalidTag as error:
            raise ValueError(f"setting {name!r} of {instance_id} cannot be decrypted") from error


def is_sealed(value: object) -> bool:
    """Tell whether a stored setting value is an encrypted one."""
    return isinstance(value, dict) and SEALED_KEY in value
