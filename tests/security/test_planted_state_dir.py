"""The CLI and `eventfn up` take the nearest `.eventfn/` up from the working directory. Another
local account could plant one in a shared parent (/tmp, a shared checkout root): its
`cli.json` sent the user's token to the planter's server, and `eventfn up` adopted it and read
the bootstrap token and master key planted there. A state dir (or context file) owned by
another account, or writable by everyone, is now passed over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.cli.context import ForeignStateDirError, locate_state_dir

STRANGER = 12345  # a uid that is not ours


def planted(shared: Path) -> Path:
    state = shared / ".eventfn"
    state.mkdir()
    (state / "cli.json").write_text('{"registry": "127.0.0.1:1", "token": "x"}')
    return state


@pytest.mark.parametrize("how", ["another owner", "world-writable", "foreign context file"])
def test_a_state_dir_planted_in_a_shared_parent_is_passed_over(tmp_path: Path, how: str) -> None:
    if how != "world-writable" and os.geteuid() != 0:
        pytest.skip("giving a file to another account needs root")  # CI runs as root
    state = planted(tmp_path)
    if how == "another owner":
        os.chown(state, STRANGER, STRANGER)
    elif how == "world-writable":
        state.chmod(0o777)
    else:
        os.chown(state / "cli.json", STRANGER, STRANGER)
    work = tmp_path / "victim" / "repo"
    work.mkdir(parents=True)
    assert locate_state_dir({}, work, None) == work / ".eventfn"
    if how != "foreign context file":  # what `eventfn up` looks for: the directory
        assert locate_state_dir({}, work, None, marker="") == work / ".eventfn"
    os.chown(state, os.geteuid(), os.getegid())  # ours again: taken
    (state / "cli.json").chmod(0o600)
    os.chown(state / "cli.json", os.geteuid(), os.getegid())
    state.chmod(0o700)
    assert locate_state_dir({}, work, None) == state


@pytest.mark.parametrize("marker", ["cli.json", ""])
def test_a_planted_state_dir_in_the_working_directory_is_refused(
    tmp_path: Path, marker: str
) -> None:
    """Passed over up the tree, a foreign `.eventfn` in the working directory itself was
    still the last resort (`cd /tmp && eventfn up` took the planter's bootstrap token)."""
    state = planted(tmp_path)
    state.chmod(0o777)
    with pytest.raises(ForeignStateDirError, match="EVENTFN_STATE_DIR"):
        locate_state_dir({}, tmp_path, None, marker=marker)
    # Nor is a foreign state dir the per-user pointer names taken.
    with pytest.raises(ForeignStateDirError):
        locate_state_dir({}, tmp_path, str(state))
