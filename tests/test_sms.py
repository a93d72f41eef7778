"""Encoding and segment counts: labelled cases and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.sms import GSM7_BASIC, GSM7_EXTENSION, MULTI, SINGLE, encoding_of, split

CASES = [
    ("empty", "", "GSM-7", 0, 0),
    ("plain", "Hi Ann, how was it?", "GSM-7", 19, 1),
    ("exactly 160", "a" * 160, "GSM-7", 160, 1),
    ("161 needs two", "a" * 161, "GSM-7", 161, 2),
    ("euro counts twice", "€" * 80, "GSM-7", 160, 1),
    ("euro tips over", "€" * 81, "GSM-7", 162, 2),
    ("accented in GSM", "café à Zürich", "GSM-7", 13, 1),
    ("not in GSM", "ça coûte", "UCS-2", 8, 1),
    ("emoji is two units", "👍" * 35, "UCS-2", 70, 1),
    ("70 ucs2", "ж" * 70, "UCS-2", 70, 1),
    ("71 ucs2", "ж" * 71, "UCS-2", 71, 2),
    ("three gsm segments", "a" * 307, "GSM-7", 307, 3),
]


@pytest.mark.parametrize(("label", "text", "name", "units", "segments"), CASES, ids=[c[0] for c in CASES])
def test_encoding_and_segments(label: str, text: str, name: str, units: int, segments: int) -> None:
    enc = encoding_of(text)
    assert (enc.name, enc.units, enc.segments) == (name, units, segments)


def test_escape_pair_is_never_split_across_segments() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro would straddle septets 153-154
    parts = split(text)
    assert parts[0] == "a" * 152 and parts[1].startswith("€")


gsm_text = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=700)


@given(st.one_of(gsm_text, st.text(max_size=400)))
def test_any_text_splits_into_valid_segments_that_reassemble(text: str) -> None:
    enc = encoding_of(text)
    parts = split(text)
    assert "".join(parts) == text
    assert len(parts) == enc.segments
    limit = SINGLE[enc.name] if len(parts) == 1 else MULTI[enc.name]
    for p in parts:
        assert encoding_of(p).units <= limit
