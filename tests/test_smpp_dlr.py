"""SMPP delivery receipts: the appendix B text, the TLVs that override it, and receipt_id_format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways.smpp.dlr import (
    MESSAGE_STATE_TO_STAT,
    STAT_TO_STATUS,
    SmppReceipt,
    parse_receipt_text,
    receipt_from,
    receipt_id,
    sent_id,
)

STANDARD = "id:1234567890 sub:001 dlvrd:001 submit date:2301011200 done date:2301011201 stat:DELIVRD err:000 text:Hello"

# (label, text, expected fields)
PARSE_CASES = [
    ("standard", STANDARD, {
        "id": "1234567890", "sub": "001", "dlvrd": "001", "submit date": "2301011200",
        "done date": "2301011201", "stat": "DELIVRD", "err": "000", "text": "Hello",
    }),
    ("upper-case keys", "ID:ab12 SUB:001 DLVRD:000 SUBMIT DATE:2301011200 DONE DATE:2301011201 STAT:UNDELIV ERR:001 TEXT:x", {
        "id": "ab12", "sub": "001", "dlvrd": "000", "submit date": "2301011200", "done date": "2301011201",
        "stat": "UNDELIV", "err": "001", "text": "x",
    }),
    ("missing fields", "id:42 stat:EXPIRED", {"id": "42", "stat": "EXPIRED"}),
    ("extra spaces", "  id:  42   sub:001  submit   date:2301011200   stat : DELIVRD  ", {
        "id": "42", "sub": "001", "submit date": "2301011200", "stat": "DELIVRD",
    }),
    ("empty value before next field", "id:7 sub: dlvrd:001 err: text:", {
        "id": "7", "sub": "", "dlvrd": "001", "err": "", "text": "",
    }),
    ("text runs to the end, colons and all", "id:9 stat:DELIVRD Text:Meet at 10:30 id:fake stat:REJECTD", {
        "id": "9", "stat": "DELIVRD", "text": "Meet at 10:30 id:fake stat:REJECTD",
    }),
    ("extra unknown fields kept", "id:9 imsi:2341 stat:DELIVRD nstat:X", {
        "id": "9", "imsi": "2341", "stat": "DELIVRD", "nstat": "X",
    }),
    ("junk tokens skipped", "receipt for id:9 -- stat:DELIVRD", {"id": "9", "stat": "DELIVRD"}),
    ("duplicate keeps the first", "id:1 id:2", {"id": "1"}),
    ("empty", "", {}),
    ("no fields at all", "hello world", {}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "text", "expected"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_receipt_text(label: str, text: str, expected: dict[str, str]) -> None:
    assert parse_receipt_text(text) == expected


NET = 0x0423
STATE = 0x0427
RMID = 0x001E

# (label, text, tlvs, expected receipt)
RECEIPT_CASES = [
    ("standard delivered", STANDARD, {}, SmppReceipt("1234567890", "DELIVRD", "delivered", "")),
    ("undeliverable", "id:5 stat:UNDELIV err:001", {}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV err:001")),
    ("expired without err", "id:5 stat:EXPIRED", {}, SmppReceipt("5", "EXPIRED", "expired", "EXPIRED")),
    ("deleted", "id:5 stat:DELETED err:000", {}, SmppReceipt("5", "DELETED", "failed", "DELETED err:000")),
    ("rejected", "id:5 stat:REJECTD err:0x0B", {}, SmppReceipt("5", "REJECTD", "rejected", "REJECTD err:0x0B")),
    ("accepted is sent", "id:5 stat:ACCEPTD err:0", {}, SmppReceipt("5", "ACCEPTD", "sent", "")),
    ("enroute: in between", "id:5 stat:ENROUTE err:000", {}, SmppReceipt("5", "ENROUTE", None, "ENROUTE err:000")),
    ("unknown stat", "id:5 stat:WEIRD", {}, SmppReceipt("5", "WEIRD", None, "WEIRD")),
    ("no stat at all", "id:5", {}, SmppReceipt("5", "UNKNOWN", None, "UNKNOWN")),
    ("long spelling, lower case", "id:5 stat:delivered err:000", {}, SmppReceipt("5", "DELIVRD", "delivered", "")),
    ("long undeliverable", "id:5 stat:Undeliverable err:034", {}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV err:034")),
    ("delivered with an error code", "id:5 stat:DELIVRD err:003", {}, SmppReceipt("5", "DELIVRD", "delivered", "DELIVRD err:003")),
    ("TLV id wins", "id:5 stat:DELIVRD", {RMID: b"AB12\x00"}, SmppReceipt("AB12", "DELIVRD", "delivered", "")),
    ("TLV id without text", "", {RMID: b"77\x00\x00", STATE: b"\x02"}, SmppReceipt("77", "DELIVRD", "delivered", "")),
    ("empty TLV id falls back", "id:5 stat:DELIVRD", {RMID: b"\x00"}, SmppReceipt("5", "DELIVRD", "delivered", "")),
    ("non-ascii TLV id", "", {RMID: b"a\xffb\x00"}, SmppReceipt("a\ufffdb", "UNKNOWN", None, "UNKNOWN")),
    ("TLV state wins", "id:5 stat:DELIVRD err:000", {STATE: b"\x05"}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV err:000")),
    ("unknown TLV state falls back", "id:5 stat:EXPIRED", {STATE: b"\x63"}, SmppReceipt("5", "EXPIRED", "expired", "EXPIRED")),
    ("network error", "id:5 stat:UNDELIV err:001", {NET: b"\x03\x00\x22"}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV err:001 network:GSM 0x0022")),
    ("network error, IS-95", "id:5 stat:UNDELIV", {NET: b"\x02\x01\x00"}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV network:IS-95 0x0100")),
    ("network error, unknown type", "id:5 stat:UNDELIV", {NET: b"\x63\x00\x01"}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV network:type 99 0x0001")),
    ("network error, odd length", "id:5 stat:UNDELIV", {NET: b"\x03\x22"}, SmppReceipt("5", "UNDELIV", "failed", "UNDELIV network:0x0322")),
    ("network error on delivered is shown", "id:5 stat:DELIVRD err:000", {NET: b"\x03\x00\x01"}, SmppReceipt("5", "DELIVRD", "delivered", "DELIVRD err:000 network:GSM 0x0001")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "text", "tlvs", "expected"), RECEIPT_CASES, ids=[c[0] for c in RECEIPT_CASES]
)
def test_receipt_from(label: str, text: str, tlvs: dict[int, bytes], expected: SmppReceipt) -> None:
    assert receipt_from(text, tlvs) == expected


@pytest.mark.parametrize("text", ["", "stat:DELIVRD err:000", "id: sub:001", "id:   "])
def test_no_id_no_receipt(text: str) -> None:
    assert receipt_from(text, {STATE: b"\x02"}) is None
    assert receipt_from(text, {RMID: b"\x00\x00"}) is None


# (label, receipt_id_format, submit_sm_resp id, receipt id, same message?)
ID_CASES = [
    ("same: the very string", "same", "1a2b", "1a2b", True),
    ("same: spaces and NULs around", "same", "1a2b", " 1a2b\x00", True),
    ("same: all-digit hex is not another number's hex", "same", "a", "10", False),
    ("same: no decimal guess", "same", "10", "a", False),
    ("same: no zero stripping", "same", "0042", "42", False),
    ("hex_to_dec", "hex_to_dec", "2587", "0A1B", True),
    ("hex_to_dec: leading zeros", "hex_to_dec", "002587", "a1b", True),
    ("hex_to_dec: another number", "hex_to_dec", "10", "10", False),
    ("dec_to_hex", "dec_to_hex", "0A1B", "2587", True),
    ("dec_to_hex: all-digit hex", "dec_to_hex", "10", "16", True),
    ("dec_to_hex: another number", "dec_to_hex", "10", "10", False),
    ("not a number stays literal", "dec_to_hex", "msg-0042", "msg-0042", True),
]


@pytest.mark.parametrize(("label", "fmt", "resp", "rid", "match"), ID_CASES, ids=[c[0] for c in ID_CASES])
def test_receipt_ids_meet_the_response_id_only_as_configured(
    label: str, fmt: str, resp: str, rid: str, match: bool
) -> None:
    assert (sent_id(resp, fmt) == receipt_id(rid, fmt)) is match


def test_state_tables() -> None:
    assert set(MESSAGE_STATE_TO_STAT.values()) <= set(STAT_TO_STATUS)
    assert {STAT_TO_STATUS[MESSAGE_STATE_TO_STAT[n]] for n in range(1, 9)} == {
        "delivered", "expired", "failed", "sent", "rejected", None,
    }  # fmt: skip


@given(st.text())
def test_parse_receipt_text_never_raises(text: str) -> None:
    fields = parse_receipt_text(text)
    if "text" in fields:
        assert fields["text"] in text


@given(
    text=st.text(), tlvs=st.dictionaries(st.sampled_from([RMID, NET, STATE, 0x1234]), st.binary(max_size=8))
)
def test_receipt_from_never_raises(text: str, tlvs: dict[int, bytes]) -> None:
    receipt = receipt_from(text, tlvs)
    if receipt is not None:
        assert receipt.smsc_id and receipt.stat == receipt.stat.upper()
        assert receipt.status == STAT_TO_STATUS.get(receipt.stat)
        assert (receipt.error == "") <= (receipt.status in ("delivered", "sent"))


@given(
    smsc_id=st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=20),
    stat=st.sampled_from(sorted(STAT_TO_STATUS)),
    err=st.integers(0, 999),
    body=st.text(max_size=30),
)
def test_appendix_format_round_trip(smsc_id: str, stat: str, err: int, body: str) -> None:
    text = f"id:{smsc_id} sub:001 dlvrd:001 submit date:2301011200 done date:2301011201 stat:{stat} err:{err:03d} text:{body}"
    receipt = receipt_from(text, {})
    assert receipt is not None and receipt.smsc_id == smsc_id
    assert receipt.status == STAT_TO_STATUS[stat]
    assert parse_receipt_text(text)["text"] == body.strip()


@given(
    n=st.integers(0, 2**64),
    m=st.integers(0, 2**64),
    fmt=st.sampled_from(["same", "hex_to_dec", "dec_to_hex"]),
)
def test_a_receipt_id_meets_only_its_own_number(n: int, m: int, fmt: str) -> None:
    """Whatever the format, the receipt for message n never meets message m's id (m != n), and
    meets n's own when the SMSC writes the ids as the format says."""
    resp_base, receipt_base = {"same": ("x", "x"), "hex_to_dec": ("d", "x"), "dec_to_hex": ("x", "d")}[fmt]
    resp_n, resp_m = format(n, resp_base), format(m, resp_base)
    rid = format(n, receipt_base).upper()
    if fmt == "same":
        rid = rid.lower()
    assert receipt_id(rid, fmt) == sent_id(resp_n, fmt)
    if m != n:
        assert receipt_id(rid, fmt) != sent_id(resp_m, fmt)
