"""The PDUs only the server side reads or writes: submit_sm with its times, data_sm, submit_multi
and their responses, receipts as deliver_sm. Built on the codec module (gateways/smpp/pdu.py:
framing, its reader, ``encode_sm``), kept apart so the client side's changes there and these do
not meet.

Times (SMPP 3.4 section 7.1.1): ``YYMMDDhhmmsstnnp`` absolute (``p`` + or - the offset ``nn``
quarter hours from UTC) or ``YYMMDDhhmmss000R`` relative to now. :func:`smpp_time` reads either
into a UTC time; a malformed one raises ValueError (the caller answers with the field's status).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateways.smpp import pdu
from gateways.smpp.pdu import Address, Pdu, _Reader

DATA_SM = 0x00000103
DATA_SM_RESP = DATA_SM | pdu.RESP
SUBMIT_MULTI = 0x00000021
SUBMIT_MULTI_RESP = SUBMIT_MULTI | pdu.RESP
QUERY_SM = 0x00000003
CANCEL_SM = 0x00000008
REPLACE_SM = 0x00000007
OUTBIND = 0x0000000B

ESME_RINVESMCLASS = 0x43
ESME_RINVNUMDESTS = 0x33
ESME_RINVSCHED = 0x61
ESME_RINVEXPIRY = 0x62
#: Not in SMPP 3.4 (which has no status for it): SMPP 5.0's "invalid data coding scheme", as
#: SMSCs answer an unknown data_coding.
ESME_RINVDCS = 0x104

#: The data codings Parley reads as text: SMSC default (GSM 03.38), ASCII, the two octet
#: codings, Latin-1, UCS-2, and the 0xF0 group (GSM-7 or 8-bit by bit 2). Others are refused.
DATA_CODINGS = frozenset({0, 1, 2, 3, 4, 8, *range(0xF0, 0x100)})
ESM_RECEIPT = 0x04

#: message_state (section 5.2.28) and the receipt text's stat, by Parley's final status.
RECEIPT_STATES: dict[str, tuple[int, str]] = {
    "delivered": (2, "DELIVRD"), "expired": (3, "EXPIRED"), "cancelled": (4, "DELETED"),
    "failed": (5, "UNDELIV"), "rejected": (8, "REJECTD"), "blocked": (8, "REJECTD"),
}  # fmt: skip


@dataclass(frozen=True)
class Submit:
    """A submit_sm, data_sm or submit_multi as the server uses it."""

    source: Address
    dests: tuple[Address, ...]
    esm_class: int
    registered_delivery: int
    data_coding: int
    short_message: bytes
    tlvs: tuple[tuple[int, bytes], ...]
    schedule: str = ""
    validity: str = ""
    priority: int = 0

    @property
    def tlv(self) -> dict[int, bytes]:
        return dict(self.tlvs)

    @property
    def data(self) -> bytes:
        """The text's bytes: short_message, or message_payload when short_message is empty."""
        return self.short_message or self.tlv.get(pdu.TAG_MESSAGE_PAYLOAD, b"")


def _address(r: _Reader) -> Address:
    return Address(ton=r.octet(), npi=r.octet(), addr=r.cstring(65))


def _tlvs(r: _Reader) -> tuple[tuple[int, bytes], ...]:
    out: list[tuple[int, bytes]] = []
    while r.i < len(r.b):
        tag, length = struct.unpack("!HH", r.take(4))
        out.append((tag, r.take(length)))
    return tuple(out)


def parse_submit(p: Pdu) -> Submit:
    """Read a submit_sm, data_sm or submit_multi body (MalformedPdu when it is cut short)."""
    r = _Reader(p)
    r.cstring(6)  # service_type
    source = _address(r)
    if p.command_id == DATA_SM:
        dest = _address(r)
        esm, rd, dc = r.octet(), r.octet(), r.octet()
        return Submit(source, (dest,), esm, rd, dc, b"", _tlvs(r))
    if p.command_id == SUBMIT_MULTI:
        dests: list[Address] = []
        for _ in range(r.octet()):
            if r.octet() == 1:
                dests.append(_address(r))
            else:  # a distribution list's name: Parley has none
                dests.append(Address(addr="", ton=0xFF, npi=0xFF))
                r.cstring(21)
    else:
        dests = [_address(r)]
    esm, _protocol_id, priority = r.octet(), r.octet(), r.octet()
    schedule, validity = r.cstring(17), r.cstring(17)
    rd, _replace, dc, _default_id = r.octet(), r.octet(), r.octet(), r.octet()
    sm = r.take(r.octet())
    return Submit(source, tuple(dests), esm, rd, dc, sm, _tlvs(r), schedule, validity, min(priority, 3))


def smpp_time(text: str, now: datetime) -> datetime:
    """An SMPP time (absolute or relative, see the module docstring) as a UTC time."""
    if len(text) != 16 or not text[:15].isdigit() or text[15] not in "+-R":
        raise ValueError(f"not an SMPP time: {text!r}")
    yy, mo, dd, hh, mi, ss = (int(text[i : i + 2]) for i in range(0, 12, 2))
    if text[15] == "R":
        return now + timedelta(days=yy * 365 + mo * 30 + dd, hours=hh, minutes=mi, seconds=ss)
    local = datetime(2000 + yy, mo, dd, hh, mi, ss, int(text[12]) * 100_000, tzinfo=UTC)
    offset = timedelta(minutes=15 * int(text[13:15]))
    return local - offset if text[15] == "+" else local + offset


def smpp_stamp(ms: int) -> str:
    """YYMMDDhhmm (UTC) of a time in ms, as a receipt's dates are written."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%y%m%d%H%M")


def submit_resp(command_id: int, seq: int, status: int, message_id: str = "") -> bytes:
    """submit_sm_resp, data_sm_resp (an error one without a body) or submit_multi_resp."""
    if command_id == pdu.SUBMIT_SM:
        return pdu.submit_sm_resp(seq, status, message_id)
    if status != pdu.ESME_ROK and command_id == DATA_SM:
        return pdu.frame(DATA_SM_RESP, status, seq)
    body = message_id.encode("ascii") + b"\x00"
    if command_id == SUBMIT_MULTI:
        body += b"\x00"  # no_unsuccess: each refusal is the whole PDU's (see the server)
    return pdu.frame(command_id | pdu.RESP, status, seq, body)


def receipt_text(message_id: str, status: str, submitted_ms: int, done_ms: int, text: str, err: str) -> str:
    """SMPP 3.4 appendix B's receipt text for a final status."""
    stat = RECEIPT_STATES.get(status, (5, "UNDELIV"))[1]
    dlvrd = "001" if status == "delivered" else "000"
    return (
        f"id:{message_id} sub:001 dlvrd:{dlvrd} submit date:{smpp_stamp(submitted_ms)} "
        f"done date:{smpp_stamp(done_ms)} stat:{stat} err:{err or '000'} text:{text[:20]}"
    )


def receipt_tlvs(message_id: str, status: str) -> tuple[tuple[int, bytes], ...]:
    """receipted_message_id and message_state."""
    state = RECEIPT_STATES.get(status, (5, "UNDELIV"))[0]
    return (
        (pdu.TAG_RECEIPTED_MESSAGE_ID, message_id.encode("ascii") + b"\x00"),
        (pdu.TAG_MESSAGE_STATE, bytes((state,))),
    )
