"""Where the CLI finds the platform, from any directory: the state dir and its context file.

The state dir is, in this order: `EVENTFN_STATE_DIR`; else the nearest `.eventfn/` holding a
`cli.json`, in the working directory or one of its parents; else the one the last
`eventfn up` recorded in the per-user file `$XDG_CONFIG_HOME/eventfn/platform.json`
(default `~/.config/eventfn/platform.json`); else `.eventfn` in the working directory.
The context file `<state dir>/cli.json` (mode 600) holds the services' addresses, the
bootstrap admin token, the tokens of workspaces created or added here, and the current one.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

STATE_DIR_NAME = ".eventfn"
CONTEXT_NAME = "cli.json"


def user_pointer(env: Mapping[str, str] | None = None) -> Path:
    """Return the per-user file naming the state dir of the platform last started."""
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config) / "eventfn" / "platform.json"


def locate_state_dir(
    env: Mapping[str, str], cwd: Path, pointed: str | None, *, marker: str = CONTEXT_NAME
) -> Path:
    """Pick the state dir: the env, a `.eventfn/` up from cwd holding `marker`, the pointer.

    Pure: `pointed` is the state dir the per-user file names (None when there is none).
    """
    if env.get("EVENTFN_STATE_DIR"):
        return (cwd / env["EVENTFN_STATE_DIR"]).absolute()
    for folder in (cwd, *cwd.parents):
        candidate = folder / STATE_DIR_NAME
        found = candidate / marker if marker else candidate
        if found.exists() and _ours(candidate) and _ours(found):
            return candidate
    if pointed and (not Path(pointed).exists() or _ours(Path(pointed))):
        return Path(pointed)
    fallback = cwd / STATE_DIR_NAME
    if fallback.exists() and not _ours(fallback):
        raise ForeignStateDirError(fallback)
    return fallback


class ForeignStateDirError(RuntimeError):
    """The state dir the CLI would use is another account's, or anyone's to write."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} belongs to another account or anyone may write it: not used (whoever "
            "left it would get your token, or hand `eventfn up` their keys); run from another "
            "directory, or set EVENTFN_STATE_DIR"
        )


def _ours(path: Path) -> bool:
    """Tell whether a state dir found up from the working directory (or its context file) is
    this user's, and not everyone's to write: another local account could leave one in a
    shared parent (/tmp) pointing the CLI at its server, to take the token, or handing
    `eventfn up` its bootstrap token and master key. Others' are passed over, as git does."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWOTH


def read_pointer(path: Path) -> str | None:
    """Return the state dir a per-user pointer file names, or None when it has none."""
    try:
        value = json.loads(path.read_text()).get("state_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and Path(value, CONTEXT_NAME).exists() else None


def state_dir() -> Path:
    """Return the state dir of the platform the CLI talks to (see the module's docstring)."""
    return locate_state_dir(os.environ, Path.cwd(), read_pointer(user_pointer()))


def state_dir_to_start() -> Path:
    """Return the state dir `eventfn up` uses: the env, else a `.eventfn/` up from cwd, else ./."""
    return locate_state_dir(os.environ, Path.cwd(), None, marker="")


def remember_platform(state: Path) -> Path:
    """Record in the per-user pointer that the CLI should find this state dir by default."""
    path = user_pointer()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"state_dir": str(state.absolute())}, indent=2) + "\n")
    return path


def context_file() -> Path:
    """Return the CLI context file written by `eventfn up`."""
    return state_dir() / CONTEXT_NAME


def load_context() -> dict[str, Any]:
    """Read the CLI context (addresses, tokens); empty when there is none."""
    path = context_file()
    return json.loads(path.read_text()) if path.exists() else {}


def save_context(**changes: Any) -> Path:
    """Update the CLI context file (mode 600: it holds tokens); return its path."""
    current = load_context() | changes
    path = context_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(current, f, indent=2)
    return path


def without_password(url: str) -> str:
    """Return a URL (or a comma-separated list of them) to show: passwords and tokens left out
    (the embedded servers', kept in their data dirs; a token in NATS's userinfo; a
    `password=` in the query)."""
    shown = []
    for one in url.split(","):
        parts = urlsplit(one)
        userinfo, at, host = parts.netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:…@{host}" if colon else f"…@{host}"
            parts = parts._replace(netloc=netloc)
        query = "&".join(
            f"{key}=…" if "password" in key.lower() else f"{key}={value}"
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        )
        shown.append(urlunsplit(parts._replace(query=query)))
    return ",".join(shown)
