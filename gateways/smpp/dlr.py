"""SMPP 3.4 delivery receipts: a deliver_sm with a receipt in it, read into our receipt facts.

A receipt's short_message is the text of SMPP 3.4 appendix B, ``id:IIII sub:SSS dlvrd:DDD
submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E text:...``, which the appendix
calls SMSC-specific and SMSCs treat so: field names in any case, fields missing, added or
reordered, spaces doubled, a ``text`` that runs to the end and may hold anything, colons
included. :func:`parse_receipt_text` reads what is there and never raises.

TLVs, when the SMSC sends them, are more reliable than the text and win over it:
receipted_message_id (0x001E) over ``id``, message_state (0x0427) over ``stat``;
network_error_code (0x0423) adds the network's error to ours.

A receipt is matched on the literal id it names (surrounding spaces and NULs stripped), never
on a guess: trying an id "in its hex and decimal forms" let the receipt for hex ``10`` land on
the message whose id is ``a`` (ten) whenever it came before its own submit_sm_resp was recorded.
An SMSC that answers in one base and reports in the other (jasmin issue 643; Kannel's
``msg-id-type``) is configured so, per connector: ``receipt_id_format`` (:data:`ID_FORMATS`),
and both ids are then brought to the same base by :func:`sent_id` and :func:`receipt_id`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateways.smpp import pdu

RECEIPTED_MESSAGE_ID = pdu.TAG_RECEIPTED_MESSAGE_ID
NETWORK_ERROR_CODE = pdu.TAG_NETWORK_ERROR_CODE
MESSAGE_STATE = pdu.TAG_MESSAGE_STATE

#: A receipt's stat (upper case) -> our status; None: an in-between or unknown state.
STAT_TO_STATUS: dict[str, str | None] = {
    "DELIVRD": "delivered", "EXPIRED": "expired", "DELETED": "failed", "UNDELIV": "failed",
    "ACCEPTD": "sent", "ENROUTE": None, "UNKNOWN": None, "REJECTD": "rejected",
    "DELIVERED": "delivered", "UNDELIVERABLE": "failed", "ACCEPTED": "sent", "REJECTED": "rejected",
}  # fmt: skip
#: The long spellings some SMSCs write, to the appendix's seven letters.
LONG_STATS = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
}
#: The message_state TLV (SMPP 3.4 section 5.2.28) -> the receipt text's stat.
MESSAGE_STATE_TO_STAT: dict[int, str] = {
    1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD",
    7: "UNKNOWN", 8: "REJECTD",
}  # fmt: skip
#: network_error_code's network type (SMPP 3.4 section 5.3.2.31).
NETWORK_TYPES: dict[int, str] = {
    1: "ANSI-136", 2: "IS-95", 3: "GSM", 4: "ANSI-136 cause", 5: "IS-95 cause", 6: "ANSI-41",
    7: "SMPP", 8: "SMSC",
}  # fmt: skip

#: The appendix's fields; one of them right after a colon means the field before was empty.
FIELDS = frozenset({"id", "sub", "dlvrd", "submit date", "done date", "stat", "err", "text"})
_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_-]*(?:[ \t]+date)?)[ \t]*:", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_DEC = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-f]+")
#: Longer ids are not numbers (and int() refuses over 4300 digits).
_MAX_NUMERIC = 64


def _key_at(text: str, pos: int) -> tuple[str, int] | None:
    m = _KEY.match(text, pos)
    if m is None:
        return None
    return _SPACE.sub(" ", m.group(1)).lower(), m.end()


def parse_receipt_text(text: str) -> dict[str, str]:
    """The ``key:value`` fields of a receipt text, keys lower-cased (``"submit date"``, one
    space), values stripped; ``text`` takes the rest of the string. A token that is no field is
    skipped; a field given twice keeps its first value. Never raises."""
    fields: dict[str, str] = {}
    pos, n = 0, len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        found = _key_at(text, pos)
        if found is None:
            while pos < n and not text[pos].isspace():
                pos += 1
            continue
        key, pos = found
        if key == "text":
            fields.setdefault(key, text[pos:].strip())
            break
        while pos < n and text[pos] in " \t":
            pos += 1
        after = _key_at(text, pos)
        if after is not None and after[0] in FIELDS:
            value = ""  # "sub: dlvrd:001": sub is empty
        else:
            start = pos
            while pos < n and not text[pos].isspace():
                pos += 1
            value = text[start:pos]
        fields.setdefault(key, value)
    return fields


@dataclass(frozen=True)
class SmppReceipt:
    """One delivery receipt.

    ``error`` is empty for a receipt that went well (delivered or sent, ``err`` absent or 0, no
    network error); otherwise it is ``stat``, then ``err:`` and the SMSC's code as it wrote it,
    when there is one, then ``network:`` with the network type and its 16-bit code in hex, when
    the TLV is there: ``"UNDELIV err:001 network:GSM 0x0022"``, ``"EXPIRED"``.
    """

    smsc_id: str
    #: Upper case, the appendix's spelling (``DELIVRD``; long spellings are shortened).
    stat: str
    #: Ours (STAT_TO_STATUS), None for an in-between or unknown state.
    status: str | None
    error: str


def _int(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _network_error(value: bytes) -> str:
    if len(value) != 3:
        return f"network:0x{value.hex()}" if value else ""
    kind = NETWORK_TYPES.get(value[0], f"type {value[0]}")
    return f"network:{kind} 0x{_int(value[1:]):04X}"


def receipt_from(text: str, tlvs: Mapping[int, bytes]) -> SmppReceipt | None:
    """The receipt in a deliver_sm (its decoded short_message and its TLVs); None when neither
    names the message it is about."""
    fields = parse_receipt_text(text)
    smsc_id = ""
    if RECEIPTED_MESSAGE_ID in tlvs:
        smsc_id = tlvs[RECEIPTED_MESSAGE_ID].rstrip(b"\x00").decode("ascii", errors="replace").strip()
    if not smsc_id:
        smsc_id = fields.get("id", "").strip()
    if not smsc_id:
        return None
    stat = ""
    if tlvs.get(MESSAGE_STATE):
        stat = MESSAGE_STATE_TO_STAT.get(_int(tlvs[MESSAGE_STATE]), "")
    if not stat:
        stat = fields.get("stat", "").strip().upper() or "UNKNOWN"
    stat = LONG_STATS.get(stat, stat)
    status = STAT_TO_STATUS.get(stat)
    err = fields.get("err", "").strip()
    network = _network_error(tlvs.get(NETWORK_ERROR_CODE, b""))
    err_zero = not err.strip("0")  # absent, or 0 however padded
    if status in ("delivered", "sent") and err_zero and not network:
        error = ""
    else:
        error = " ".join(p for p in (stat, f"err:{err}" if err else "", network) if p)
    return SmppReceipt(smsc_id=smsc_id, stat=stat, status=status, error=error)


#: ``receipt_id_format``: how a receipt's id relates to the submit_sm_resp's (Kannel's msg-id-type).
#: ``same``: the very same string; ``hex_to_dec``: the receipt says in hex what the response said in
#: decimal; ``dec_to_hex``: the receipt says in decimal what the response said in hex.
ID_FORMATS = ("same", "hex_to_dec", "dec_to_hex")


def _number(text: str, base: int) -> int | None:
    pattern = _DEC if base == 10 else _HEX
    if len(text) > _MAX_NUMERIC or not pattern.fullmatch(text.lower()):
        return None
    return int(text, base)


def sent_id(resp_id: str, fmt: str = "same") -> str:
    """The form a submit_sm_resp's message id is recorded under: the literal id (``same``), or
    for a converting format its number in the response's base without leading zeros (hex in
    lower case), so that :func:`receipt_id` of the same number meets it. An id that is not a
    number in that base stays literal."""
    literal = resp_id.strip("\x00 \t\r\n")
    base = {"hex_to_dec": 10, "dec_to_hex": 16}.get(fmt)
    n = None if base is None else _number(literal, base)
    if n is None:
        return literal
    return str(n) if base == 10 else format(n, "x")


def receipt_id(smsc_id: str, fmt: str = "same") -> str:
    """The form a receipt's id is looked up under: the literal id (``same``), or converted to the
    response's base (``hex_to_dec``: the receipt's hex to decimal; ``dec_to_hex``: its decimal to
    lower-case hex). An id that is not a number in the receipt's base stays literal."""
    literal = smsc_id.strip("\x00 \t\r\n")
    base = {"hex_to_dec": 16, "dec_to_hex": 10}.get(fmt)
    n = None if base is None else _number(literal, base)
    if n is None:
        return literal
    return str(n) if base == 16 else format(n, "x")
