"""SMPP 3.4 delivery receipts: a deliver_sm with a receipt in it, read into our receipt facts.

A receipt's short_message is the text of SMPP 3.4 appendix B, ``id:IIII sub:SSS dlvrd:DDD
submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E text:...``, which the appendix
calls SMSC-specific and SMSCs treat so: field names in any case, fields missing, added or
reordered, spaces doubled, a ``text`` that runs to the end and may hold anything, colons
included. :func:`parse_receipt_text` reads what is there and never raises.

TLVs, when the SMSC sends them, are more reliable than the text and win over it:
receipted_message_id (0x001E) over ``id``, message_state (0x0427) over ``stat``;
network_error_code (0x0423) adds the network's error to ours.

The id in a receipt is not always the id submit_sm_resp gave: some SMSCs answer in hex and
report in decimal or the reverse, or pad with zeros (jasmin issue 643). :func:`id_forms` gives
every form an id may take, for the gateway to match on.
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


def id_forms(smsc_id: str) -> list[str]:
    """Every form ``smsc_id`` may take in a receipt, the canonical one (stripped, lower case)
    first: then its hex form when it is decimal, its decimal form when it is hex (and not
    decimal), and, for a hex or decimal id, its form without leading zeros. Unique; empty for an
    empty id."""
    canonical = smsc_id.strip().lower()
    if not canonical:
        return []
    forms = [canonical]
    if len(canonical) <= _MAX_NUMERIC:
        if _DEC.fullmatch(canonical):
            forms.append(format(int(canonical), "x"))
        elif _HEX.fullmatch(canonical):
            forms.append(str(int(canonical, 16)))
    if _HEX.fullmatch(canonical):
        forms.append(canonical.lstrip("0") or "0")
    return list(dict.fromkeys(forms))
