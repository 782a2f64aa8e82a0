"""Tests for the `integrations` object decision."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.integrations import integration_key, wants

KEY = integration_key("My Destination Function", "My Workspace")


def test_key_names_function_and_workspace() -> None:
    assert KEY == "My Destination Function (My Workspace)"


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        (None, True),
        ({}, True),
        ({"All": True}, True),
        ({"All": False}, False),
        ({"All": False, KEY: True}, True),
        ({"All": True, KEY: False}, False),
        ({KEY: False}, False),
        ({"All": False, KEY: {"apiKey": "x"}}, True),
        ({"All": False, KEY: "yes"}, True),
        ({"All": False, KEY: None}, False),
        ({"All": True, KEY: None}, True),
        ({"All": False, KEY.lower(): True}, False),
        ({"All": False, "My Destination Function": True}, False),
        ({"All": 0}, True),
        ({"Amplitude": False}, True),
    ],
)
def test_all_then_own_key(integrations: Any, expected: bool) -> None:
    event = {"type": "track"} if integrations is None else {"integrations": integrations}
    assert wants(event, KEY) is expected


def test_non_object_integrations_enable() -> None:
    assert wants({"integrations": ["x"]}, KEY) is True


values = (
    st.none() | st.booleans() | st.integers() | st.text() | st.dictionaries(st.text(), st.none())
)


@given(st.dictionaries(st.text(), values), values, values)
def test_only_false_disables(others: dict[str, Any], everything: Any, own: Any) -> None:
    integrations = {**others, "All": everything, KEY: own}
    expected = own is not False if own is not None else everything is not False
    assert wants({"integrations": integrations}, KEY) is expected
