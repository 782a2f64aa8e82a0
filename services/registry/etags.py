"""Etags of the registry's mutable resources (AIP-154): derived from each row's revision.

An etag names one state of one resource: it is a digest of the resource's kind, id and
revision, so the etag of one resource never matches another's. Every change increments the
row's revision; a call that carries an etag applies only while it is still current.
"""

from __future__ import annotations

import base64
import hashlib

from services.common.errors import EtagMismatch


def etag(kind: str, object_id: str, revision: int) -> str:
    """Return the etag of a resource at a revision."""
    digest = hashlib.sha256(f"{kind}/{object_id}/{revision}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


def check(kind: str, object_id: str, revision: int, given: str) -> None:
    """Raise EtagMismatch unless `given` is empty or the resource's current etag."""
    current = etag(kind, object_id, revision)
    if given and given != current:
        raise EtagMismatch(f"{kind} {object_id}", given, current)
