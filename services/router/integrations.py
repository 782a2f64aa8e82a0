"""Decide from an event's `integrations` object whether one destination gets it.

Segment's rules: `"All"` (true when absent) is the default for every destination;
the destination's own key, case-sensitive, overrides it. For a destination
function the key is `"<Function Name> (<Workspace Name>)"`. Only `false` disables:
any other value (`true`, an object of options...) enables, and `null` counts as
not given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def integration_key(function_name: str, workspace_name: str) -> str:
    """Return the `integrations` key that names a function of a workspace."""
    return f"{function_name} ({workspace_name})"


def wants(event: Mapping[str, Any], key: str) -> bool:
    """Tell whether the event's `integrations` object lets the destination `key` have it."""
    settings = event.get("integrations")
    if type(settings) is not dict or not settings:
        return True
    own = settings.get(key)
    if own is not None:
        return own is not False
    return settings.get("All") is not False
