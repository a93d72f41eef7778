"""SMPP text: segments out, text back in. Labelled cases and round-trip properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.sms import GSM7_BASIC, GSM7_EXTENSION, encoding_of
from gateways.smpp.text import (
    CONCAT_MODES,
    MESSAGE_PAYLOAD,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
    Concat,
    Segment,
    concat_from_tlvs,
    decode_text,
    encode_message,
    parse_udh,
    segments_cost,
)

GSM_CHARS = sorted(GSM7_BASIC | GSM7_EXTENSION)
# Characters that sit on the boundaries: escapes, surrogate pairs, BMP non-GSM, plain.
TRICKY = ["a", "€", "{", "\f", "👍", "𝄞", "ж", "ç", "\n", "@", " "]

texts = st.one_of(
    st.text(max_size=400),
    st.text(alphabet=GSM_CHARS, max_size=800),
    st.text(alphabet=st.sampled_from(TRICKY), max_size=800),
    st.text(alphabet=st.sampled_from(["a", "€", "^"]), min_size=150, max_size=500),
    st.text(alphabet=st.sampled_from(["ж", "👍"]), min_size=60, max_size=300),
)


def reassemble(segments: list[Segment]) -> tuple[str, list[Concat | None]]:
    """What a handset shows: each segment's header or TLVs read, its text decoded, in seq order."""
    pieces: list[tuple[int, str]] = []
    concats: list[Concat | None] = []
    for seg in segments:
        tlvs = dict(seg.tlvs)
        if MESSAGE_PAYLOAD in tlvs:
            assert seg.short_message == b""
            concat, body = None, tlvs[MESSAGE_PAYLOAD]
        elif seg.esm_class & 0x40:
            concat, body = parse_udh(seg.esm_class, seg.short_message)
        else:
            concat, body = concat_from_tlvs(tlvs), seg.short_message
        concats.append(concat)
        pieces.append((concat.seq if concat else 1, decode_text(seg.data_coding, body)))
    return "".join(text for _, text in sorted(pieces, key=lambda p: p[0])), concats


def air_fits(seg: Segment) -> bool:
    """The segment's user data (UDH and text) fits one SMS: 140 octets."""
    udh = seg.short_message[0] + 1 if seg.esm_class & 0x40 else 0
    body = len(seg.short_message) - udh
    if seg.data_coding == 8:
        return udh + body <= 140
    return math.ceil(udh * 8 / 7) + body <= 160  # unpacked GSM-7: one septet an octet


@pytest.mark.parametrize("concat", CONCAT_MODES)
@given(text=texts, ref=st.integers(0, 0xFFFF))
def test_round_trip(concat: str, text: str, ref: int) -> None:
    segments = encode_message(text, concat=concat, ref=ref)
    back, concats = reassemble(segments)
    assert back == text
    if concat == "payload":
        assert len(segments) == 1
    else:
        assert all(air_fits(seg) for seg in segments)
    if len(segments) > 1:
        total = len(segments)
        want_ref = ref & 0xFF if concat == "udh8" else ref
        assert concats == [Concat(want_ref, total, seq) for seq in range(1, total + 1)]
    else:
        assert concats == [None]
    expected_cost = max(1, encoding_of(text).segments)
    if concat in ("udh8", "sar"):
        assert len(segments) == expected_cost
    if concat != "udh16":
        assert segments_cost(text, concat) == expected_cost
    else:
        assert segments_cost(text, concat) == len(segments) >= expected_cost
    coding = 0 if encoding_of(text).name == "GSM-7" else 8
    assert {seg.data_coding for seg in segments} == {coding}


@given(data_coding=st.integers(0, 255), data=st.binary(max_size=300))
def test_decode_text_never_raises(data_coding: int, data: bytes) -> None:
    for default in ("gsm0338", "latin_1", "ascii", "nonsense"):
        assert isinstance(decode_text(data_coding, data, default=default), str)


@given(esm_class=st.integers(0, 255), sm=st.binary(max_size=40))
def test_parse_udh_never_raises_and_only_strips_a_prefix(esm_class: int, sm: bytes) -> None:
    concat, rest = parse_udh(esm_class, sm)
    assert sm.endswith(rest)
    if concat is not None:
        assert 1 <= concat.seq <= concat.total


def ucs2(s: str) -> bytes:
    return s.encode("utf-16-be")


# (label, data_coding, data, default, expected)
DECODE_CASES = [
    ("0 gsm with escape", 0, b"Hello \x1b\x65", "gsm0338", "Hello €"),
    ("0 gsm specials", 0, b"\x00\x01\x02\x11", "gsm0338", "@£$_"),
    ("0 as latin_1", 0, b"caf\xe9", "latin_1", "café"),
    ("0 as ascii", 0, b"caf\xe9", "ascii", "caf\ufffd"),
    ("0 unknown default is gsm", 0, b"\x00", "nonsense", "@"),
    ("0 empty", 0, b"", "gsm0338", ""),
    ("gsm invalid bytes", 0, b"a\x80\xff", "gsm0338", "a??"),
    ("gsm trailing escape", 0, b"a\x1b", "gsm0338", "a\xa0"),
    ("gsm unknown escape", 0, b"\x1b\x41b", "gsm0338", "\xa0b"),
    ("1 ascii", 1, b"hi\xff", "gsm0338", "hi\ufffd"),
    ("3 latin-1", 3, b"\xe9t\xe9", "gsm0338", "été"),
    ("8 ucs2 with emoji", 8, ucs2("жé👍"), "gsm0338", "жé👍"),
    ("8 odd length", 8, ucs2("ж") + b"\x00", "gsm0338", "ж\ufffd"),
    ("8 lone surrogate", 8, b"\xd8\x3d", "gsm0338", "\ufffd"),
    ("2 utf-8", 2, "café".encode(), "gsm0338", "café"),
    ("2 not utf-8 is latin-1", 2, b"caf\xe9", "gsm0338", "café"),
    ("4 utf-8", 4, "жж".encode(), "gsm0338", "жж"),
    ("4 not utf-8 is latin-1", 4, b"\xff\xfe", "gsm0338", "ÿþ"),
    ("0x11 general group gsm", 0x11, b"\x00\x1b\x65", "latin_1", "@€"),
    ("0x15 general group 8-bit", 0x15, b"\xe9", "gsm0338", "é"),
    ("0x19 general group ucs2", 0x19, ucs2("ж👍"), "gsm0338", "ж👍"),
    ("0x0C reserved alphabet", 0x0C, "ж".encode(), "gsm0338", "ж"),
    ("0xF4 8-bit", 0xF4, "café".encode(), "gsm0338", "café"),
    ("0xF6 8-bit latin", 0xF6, b"\xe9", "gsm0338", "é"),
    ("0xF0 gsm", 0xF0, b"\x00\x1b\x65", "latin_1", "@€"),
    ("0xF1 gsm", 0xF1, b"Hi", "gsm0338", "Hi"),
    ("0x77 unknown utf-8", 0x77, "ж".encode(), "gsm0338", "ж"),
    ("0x77 unknown latin-1", 0x77, b"\xff", "gsm0338", "ÿ"),
    ("0xE0 message waiting is octets", 0xE0, b"ok", "gsm0338", "ok"),
]


@pytest.mark.parametrize(
    ("label", "coding", "data", "default", "expected"), DECODE_CASES, ids=[c[0] for c in DECODE_CASES]
)
def test_decode_text(label: str, coding: int, data: bytes, default: str, expected: str) -> None:
    assert decode_text(coding, data, default=default) == expected


# (label, esm_class, short_message, concat, rest)
UDH_CASES = [
    ("no udhi: untouched", 0x00, b"\x05\x00\x03\x01\x02\x01hi", None, b"\x05\x00\x03\x01\x02\x01hi"),
    ("udhi, empty", 0x40, b"", None, b""),
    ("udh8", 0x40, b"\x05\x00\x03\x07\x02\x01hi", Concat(7, 2, 1), b"hi"),
    ("udh16 big endian ref", 0x40, b"\x06\x08\x04\x12\x34\x03\x02hi", Concat(0x1234, 3, 2), b"hi"),
    ("other esm bits", 0x43, b"\x05\x00\x03\x07\x02\x02hi", Concat(7, 2, 2), b"hi"),
    ("other IE first", 0x40, b"\x08\x24\x01\x01\x00\x03\x09\x02\x01hi", Concat(9, 2, 1), b"hi"),
    ("no concat IE: stripped", 0x40, b"\x03\x24\x01\x01hi", None, b"hi"),
    ("empty udh", 0x40, b"\x00hi", None, b"hi"),
    ("concat IE of wrong length ignored", 0x40, b"\x04\x00\x02\x01\x02hi", None, b"hi"),
    ("length beyond data", 0x40, b"\x09\x00\x03\x01", None, b"\x09\x00\x03\x01"),
    ("IE overruns udh", 0x40, b"\x03\x00\x03\x01hi", None, b"\x03\x00\x03\x01hi"),
    ("IE header cut", 0x40, b"\x01\x00hi", None, b"\x01\x00hi"),
    ("only the length octet", 0x40, b"\x05", None, b"\x05"),
    ("total 0", 0x40, b"\x05\x00\x03\x07\x00\x01hi", None, b"hi"),
    ("seq 0", 0x40, b"\x05\x00\x03\x07\x02\x00hi", None, b"hi"),
    ("seq past total", 0x40, b"\x05\x00\x03\x07\x02\x03hi", None, b"hi"),
    ("udh16 seq past total", 0x40, b"\x06\x08\x04\x00\x01\x01\x02hi", None, b"hi"),
]


@pytest.mark.parametrize(("label", "esm", "sm", "concat", "rest"), UDH_CASES, ids=[c[0] for c in UDH_CASES])
def test_parse_udh(label: str, esm: int, sm: bytes, concat: Concat | None, rest: bytes) -> None:
    assert parse_udh(esm, sm) == (concat, rest)


R, T, S = SAR_MSG_REF_NUM, SAR_TOTAL_SEGMENTS, SAR_SEGMENT_SEQNUM
# (label, tlvs, concat)
SAR_CASES = [
    ("all three", {R: b"\x12\x34", T: b"\x03", S: b"\x02"}, Concat(0x1234, 3, 2)),
    ("wider values", {R: b"\x00\x00\x01", T: b"\x00\x03", S: b"\x00\x03"}, Concat(1, 3, 3)),
    ("missing seq", {R: b"\x12\x34", T: b"\x03"}, None),
    ("missing ref", {T: b"\x03", S: b"\x01"}, None),
    ("none", {}, None),
    ("seq past total", {R: b"\x01", T: b"\x02", S: b"\x03"}, None),
    ("seq 0", {R: b"\x01", T: b"\x02", S: b"\x00"}, None),
    ("empty total", {R: b"\x01", T: b"", S: b"\x01"}, None),
]


@pytest.mark.parametrize(("label", "tlvs", "concat"), SAR_CASES, ids=[c[0] for c in SAR_CASES])
def test_concat_from_tlvs(label: str, tlvs: dict[int, bytes], concat: Concat | None) -> None:
    assert concat_from_tlvs(tlvs) == concat


def test_short_text_is_one_plain_segment_in_every_mode() -> None:
    for concat in CONCAT_MODES:
        assert encode_message("Hi €", concat=concat) == [Segment(0, 0, b"Hi \x1b\x65")]
        assert encode_message("Привет", concat=concat) == [Segment(8, 0, ucs2("Привет"))]
        assert encode_message("", concat=concat) == [Segment(0, 0, b"")]
        assert segments_cost("", concat) == 1


def test_exact_headers_and_tlvs() -> None:
    text = "a" * 161
    udh8 = encode_message(text, concat="udh8", ref=0x1234)
    assert [s.short_message[:6] for s in udh8] == [b"\x05\x00\x03\x34\x02\x01", b"\x05\x00\x03\x34\x02\x02"]
    assert [len(s.short_message) - 6 for s in udh8] == [153, 8]
    assert {s.esm_class for s in udh8} == {0x40}
    udh16 = encode_message(text, concat="udh16", ref=0x1234)
    assert udh16[0].short_message[:7] == b"\x06\x08\x04\x12\x34\x02\x01"
    assert [len(s.short_message) - 7 for s in udh16] == [152, 9]
    sar = encode_message(text, concat="sar", ref=0x11234)
    assert sar[1] == Segment(0, 0, b"a" * 8, ((R, b"\x12\x34"), (T, b"\x02"), (S, b"\x02")))
    payload = encode_message(text, concat="payload")
    assert payload == [Segment(0, 0, b"", ((MESSAGE_PAYLOAD, b"a" * 161),))]


def test_ucs2_room_per_part() -> None:
    text = "ж" * 71
    assert [len(s.short_message) - 6 for s in encode_message(text)] == [134, 8]
    assert [len(s.short_message) - 7 for s in encode_message(text, concat="udh16")] == [132, 10]


def test_escape_and_surrogate_pairs_stay_whole() -> None:
    gsm = encode_message("a" * 152 + "€" + "b" * 10)
    assert gsm[0].short_message[6:] == b"a" * 152 and gsm[1].short_message[6:8] == b"\x1b\x65"
    ucs = encode_message("ж" * 66 + "👍" + "ж" * 10)
    assert ucs[0].short_message[6:] == ucs2("ж" * 66)
    assert ucs[1].short_message[6:10] == ucs2("👍")
    udh16 = encode_message("a" * 151 + "€" + "b" * 10, concat="udh16")
    assert udh16[0].short_message[7:] == b"a" * 151


def test_too_many_parts() -> None:
    assert len(encode_message("a" * 153 * 255)) == 255
    with pytest.raises(ValueError, match="39016"):
        encode_message("a" * (153 * 255 + 1))
    with pytest.raises(ValueError, match="39016"):
        encode_message("a" * (153 * 255 + 1), concat="payload")
    assert segments_cost("a" * (153 * 255 + 1), "payload") == 256


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="udh8"):
        encode_message("hi", concat="udh32")
    with pytest.raises(ValueError, match="udh8"):
        segments_cost("hi", "nope")
