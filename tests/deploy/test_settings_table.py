"""README.md's table of every service's variables is the one the settings classes generate."""

from __future__ import annotations

import re

import pytest

from tests.deploy import settings_table


def test_the_readme_table_is_current() -> None:
    readme = settings_table.README.read_text()
    assert settings_table.BEGIN in readme and settings_table.END in readme
    current = readme[
        readme.index(settings_table.BEGIN) : readme.index(settings_table.END)
        + len(settings_table.END)
    ]
    assert current == settings_table.render(), (
        "README.md's settings table is stale: run `make docs` and commit README.md"
    )


def test_every_field_of_every_service_is_a_row() -> None:
    table = settings_table.render()
    rows = set(re.findall(r"^\| `(EVENTFN_\w+)` \|", table, re.M))
    for cls in settings_table.SERVICES.values():
        for name in cls.model_fields:
            assert f"EVENTFN_{name.upper()}" in rows, name


def test_a_field_without_a_comment_is_refused() -> None:
    from pydantic_settings import BaseSettings

    class Undocumented(BaseSettings):
        """A settings class whose field says nothing."""

        mystery_knob: int = 3

    with pytest.raises(LookupError, match="mystery_knob has no comment"):
        settings_table.describe("mystery_knob", Undocumented)
