"""Saying something about a key at most once per period."""

from __future__ import annotations

from services.common.once_per import OncePer


def test_a_key_is_due_once_per_period_and_keys_apart() -> None:
    now = [0.0]
    once = OncePer(60, clock=lambda: now[0])
    assert once.due("ins_1")
    assert once.due("ins_2")
    now[0] = 59.9
    assert not once.due("ins_1")
    now[0] = 60.0
    assert once.due("ins_1")
    assert not once.due("ins_1")


def test_many_keys_start_afresh_rather_than_grow() -> None:
    now = [0.0]
    once = OncePer(60, keys=3, clock=lambda: now[0])
    for key in ("a", "b", "c"):
        assert once.due(key)
    assert once.due("d")  # a fourth key: the others forgotten
    assert once.due("a")
