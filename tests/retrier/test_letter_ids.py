"""Dead letters' public ids: each reads back as the letter it was given for, and any other
text is refused as an id the deployment did not give, never read as some letter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.retrier.dead_packs import BadDeadLetterId, LetterId
from services.retrier.letter_ids import LetterIds

IDS = LetterIds.from_secret("svc_a-service-token")
SEQUENCES = st.integers(min_value=1, max_value=2**64 - 1)
INDEXES = st.none() | st.integers(min_value=0, max_value=10**6)
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


@given(SEQUENCES, INDEXES)
def test_an_id_reads_back_as_its_letter(seq: int, index: int | None) -> None:
    shown = IDS.show(LetterId(seq, index))
    assert IDS.read(shown) == LetterId(seq, index)
    # The pack's id is the letter's before its dot: the same for every event of the pack.
    assert shown.split(".")[0] == IDS.show(LetterId(seq))


@given(SEQUENCES)
def test_another_deployments_ids_are_refused(seq: int) -> None:
    theirs = LetterIds.from_secret("svc_another-deployment").show(LetterId(seq, 0))
    with pytest.raises(BadDeadLetterId, match="not one this deployment gave"):
        IDS.read(theirs)


@given(st.text(max_size=60))
def test_any_other_text_is_refused_as_an_id(text: str) -> None:
    try:
        letter = IDS.read(text)
    except BadDeadLetterId:
        return
    # Only an id this deployment gives reads as a letter (a forged one: once in 2**64).
    assert IDS.show(letter) == text


@given(SEQUENCES, INDEXES, st.sampled_from(["upper", "zeros", "underscore", "space", "padding"]))
def test_a_letter_has_one_spelling(seq: int, index: int | None, change: str) -> None:
    """Another spelling read as the same letter (upper case, `00`, `1_0`, padding bits of the
    last character): an audit entry could name a letter by an id `dead list` never shows."""
    shown = IDS.show(LetterId(seq, index if index is not None else 10))
    pack, _, position = shown.partition(".")
    other = {
        "upper": shown.upper(),
        "zeros": f"{pack}.0{position}",
        "underscore": f"{pack}.{position[0]}_{position[1:]}" if len(position) > 1 else shown + " ",
        "space": f" {shown}",
        # The last character's two low bits are padding: flipping one spells the same bytes.
        "padding": BASE32[BASE32.index(pack[-1]) ^ 1].join((pack[:-1], "." + position)),
    }[change]
    with pytest.raises(BadDeadLetterId):
        IDS.read(other)
