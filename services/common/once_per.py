"""Say something about a key at most once per period: a log line per instance that a
tenant's traffic would otherwise repeat for every pack it sends."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class OncePer:
    """Tell, per key, whether `seconds` have passed since it was last due."""

    def __init__(
        self, seconds: float, *, keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._keys = keys
        self._clock = clock
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        """Return True (and start the key's period) when its period has passed."""
        now = self._clock()
        if now - self._last.get(key, -math.inf) < self._seconds:
            return False
        if len(self._last) >= self._keys and key not in self._last:
            self._last.clear()  # many keys at once: start afresh rather than grow
        self._last[key] = now
        return True
