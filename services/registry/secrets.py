"""Encryption at rest of encrypted values (AES-256-GCM from `cryptography`), with data keys.

The deployment's master key (EVENTFN_SECRET_KEY, else the state dir's `secret.key`) only
wraps data keys, kept in the `secret_key` table; values are sealed under the current data key
as `{"$sealed": "v2:<key id>:<b64 of nonce + ciphertext>"}`, bound to `instance_id/name`
(the AAD). Values sealed by earlier releases directly with the master key (`v1:`) stay
readable until a rotation re-seals them.

Every replica reads the same table: a transaction that seals reads the current data key FOR
SHARE, so a rotation's switch to a new key (an UPDATE of that row) waits for it to commit, and
once switched no replica seals under the old key again. Data keys are cached per process; a
key id a replica does not know yet (made by another replica's rotation) is loaded on the miss.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.registry.models import SecretKey
from services.registry.store import RegistryStore, new_id, now

log = logging.getLogger(__name__)

MASK = "••••••••"
SEALED_KEY = "$sealed"
V1 = "v1:"  # sealed directly by a master key (releases before data keys)
V2 = "v2:"  # "v2:<data key id>:<b64>"
CURRENT = "current"
RETIRING = "retiring"
_CURRENT_IN_SESSION = "eventfn.secret_key.current"
# Any constant works; it only has to be the same in every registry replica.
_START_LOCK = 0x6576_656E_746B_6579


def load_or_create_key(explicit: str | None, key_file: Path) -> bytes:
    """Return the 32-byte key given in settings (base64), else the state-dir key, creating it."""
    if explicit:
        return parse_key(explicit, "EVENTFN_SECRET_KEY")
    if key_file.exists():
        return base64.b64decode(key_file.read_text().strip())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode())
    return key


def parse_key(value: str, variable: str) -> bytes:
    """Decode a base64 key of 32 bytes, or fail naming the variable it came from."""
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{variable} must be 32 bytes, base64-encoded")
    return key


@dataclass(frozen=True)
class MasterKey:
    """A master key and its public id (an HMAC of the key: it reveals nothing of it)."""

    id: str
    aead: AESGCM

    @classmethod
    def of(cls, key: bytes) -> MasterKey:
        """Wrap raw key bytes."""
        digest = hmac.new(key, b"eventfn/master-key-id", hashlib.sha256).hexdigest()
        return cls("mk_" + digest[:16], AESGCM(key))


def is_sealed(value: object) -> bool:
    """Tell whether a stored value is an encrypted one."""
    return isinstance(value, dict) and SEALED_KEY in value


def key_id_of(sealed: dict[str, str]) -> str | None:
    """Return the data key a sealed value is sealed under (None: directly by a master key)."""
    stored = sealed[SEALED_KEY]
    if type(stored) is not str or not stored.startswith(V2):
        return None
    return stored[len(V2) :].partition(":")[0]


def sealed_prefix(key_id: str) -> str:
    """Return how every value sealed under a data key begins."""
    return f"{V2}{key_id}:"


class SecretBox:
    """Seal and open values, bound to their owner and name, under the current data key."""

    def __init__(self, store: RegistryStore, master: bytes, previous: bytes | None = None) -> None:
        self._store = store
        self.master = MasterKey.of(master)
        # Read-only: the master key used before EVENTFN_SECRET_KEY changed.
        self._previous = MasterKey.of(previous) if previous else None
        self._keys: dict[str, AESGCM] = {}

    @property
    def _masters(self) -> dict[str, MasterKey]:
        masters = {self.master.id: self.master}
        if self._previous is not None and self._previous.id != self.master.id:
            masters[self._previous.id] = self._previous
        return masters

    def _unwrap(self, row: SecretKey) -> bytes:
        master = self._masters.get(row.master_key_id)
        if master is None:
            raise RuntimeError(
                f"data key {row.id} is wrapped by master key {row.master_key_id}, which this "
                f"registry does not have (its EVENTFN_SECRET_KEY is {self.master.id}): set "
                "EVENTFN_SECRET_KEY to the key this database was sealed with, or set it as "
                "EVENTFN_SECRET_KEY_PREVIOUS while changing keys"
            )
        aad = f"eventfn/secret-key/{row.id}".encode()
        try:
            return master.aead.decrypt(row.wrapped[:12], row.wrapped[12:], aad)
        except InvalidTag as error:
            raise RuntimeError(f"data key {row.id} cannot be unwrapped (tampered with)") from error

    def _wrap(self, key_id: str, key: bytes) -> bytes:
        nonce = os.urandom(12)
        aad = f"eventfn/secret-key/{key_id}".encode()
        return nonce + self.master.aead.encrypt(nonce, key, aad)

    def _remember(self, row: SecretKey) -> AESGCM:
        aead = self._keys.get(row.id)
        if aead is None:
            aead = self._keys[row.id] = AESGCM(self._unwrap(row))
        return aead

    def new_key(self, state: str = CURRENT) -> SecretKey:
        """Make a data key wrapped by the master key, as a row to insert."""
        key_id = new_id("key")
        key = AESGCM.generate_key(bit_length=256)
        self._keys[key_id] = AESGCM(key)
        return SecretKey(
            id=key_id,
            master_key_id=self.master.id,
            wrapped=self._wrap(key_id, key),
            state=state,
            created_at=now(),
        )

    def rewrap(self, row: SecretKey) -> bool:
        """Wrap a data key by the current master key if another wrapped it; tell if it did."""
        key = self._unwrap(row)
        self._keys.setdefault(row.id, AESGCM(key))
        if row.master_key_id == self.master.id:
            return False
        row.wrapped = self._wrap(row.id, key)
        row.master_key_id = self.master.id
        return True

    def forget(self, key_ids: list[str]) -> None:
        """Drop deleted data keys from this process's cache."""
        for key_id in key_ids:
            self._keys.pop(key_id, None)

    async def start(self) -> None:
        """Re-wrap data keys of the previous master key, make the first data key; load them.

        Fails when a data key is wrapped by a master key this registry does not have: a wrong
        EVENTFN_SECRET_KEY is reported at start, not at the first read of a setting.
        """
        async with self._store.transaction() as s:
            conn = await s.connection()
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _START_LOCK})
            rows = list((await s.exec(select(SecretKey).with_for_update())).all())
            rewrapped = [row.id for row in rows if self.rewrap(row)]
            for row in rows:
                s.add(row)
            if rewrapped:
                log.info("data keys %s re-wrapped by master key %s", rewrapped, self.master.id)
            if not any(row.state == CURRENT for row in rows):
                s.add(self.new_key())

    async def current(self, session: AsyncSession) -> str:
        """Return the current data key's id, locked FOR SHARE until the session commits."""
        key_id = session.info.get(_CURRENT_IN_SESSION)
        if key_id is not None:
            return key_id
        for _ in range(3):
            # A rotation committing meanwhile hides the old row from this statement and the
            # new one from its snapshot: the next statement sees the new one.
            row = (
                await session.exec(
                    select(SecretKey)
                    .where(col(SecretKey.state) == CURRENT)
                    .with_for_update(read=True)
                )
            ).first()
            if row is not None:
                self._remember(row)
                session.info[_CURRENT_IN_SESSION] = row.id
                return row.id
        raise RuntimeError("no current data key in table secret_key")

    async def seal(
        self, session: AsyncSession, value: object, *, instance_id: str, name: str
    ) -> dict[str, str]:
        """Encrypt a JSON-able value into the stored `{"$sealed": ...}` form."""
        key_id = await self.current(session)
        nonce = os.urandom(12)
        aad = f"{instance_id}/{name}".encode()
        ct = self._keys[key_id].encrypt(nonce, orjson.dumps(value), aad)
        return {SEALED_KEY: sealed_prefix(key_id) + base64.b64encode(nonce + ct).decode()}

    async def _key(self, key_id: str) -> AESGCM | None:
        aead = self._keys.get(key_id)
        if aead is None:
            async with self._store.transaction() as s:
                row = await s.get(SecretKey, key_id)
            aead = self._remember(row) if row is not None else None
        return aead

    async def open(self, sealed: dict[str, str], *, instance_id: str, name: str) -> object:
        """Decrypt a stored sealed value; raise ValueError when it was tampered with."""
        stored = sealed[SEALED_KEY]
        if type(stored) is not str:
            raise ValueError(f"setting {name!r} of {instance_id} cannot be decrypted")
        key_id = key_id_of(sealed)
        if key_id is not None:
            aead = await self._key(key_id)
            if aead is None:
                raise ValueError(
                    f"setting {name!r} of {instance_id} is sealed under data key {key_id}, "
                    "which no longer exists"
                )
            candidates = [aead]
            body = stored[len(sealed_prefix(key_id)) :]
        else:
            candidates = [m.aead for m in self._masters.values()]
            body = stored.removeprefix(V1)
        raw = base64.b64decode(body)
        aad = f"{instance_id}/{name}".encode()
        for aead in candidates:
            try:
                return orjson.loads(aead.decrypt(raw[:12], raw[12:], aad))
            except InvalidTag:
                continue
        raise ValueError(f"setting {name!r} of {instance_id} cannot be decrypted")
