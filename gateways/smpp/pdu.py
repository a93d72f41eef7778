"""SMPP 3.4 PDUs on the wire: the one module that encodes and decodes them.

Everything else in ``gateways/smpp`` (and the SMSC simulator) builds and reads PDUs through
these functions only, so the codec can be replaced wholesale if a profile says it dominates.

What comes from aiosmpplib: the control PDUs (bind_*, their responses, enquire_link, unbind,
generic_nack, submit_sm_resp, deliver_sm_resp) are encoded by its PDU classes, and the status
names are its ``SmppCommandStatus``. What does not, and why:

- submit_sm / deliver_sm bodies are packed here from pre-split segments: aiosmpplib's
  ``SubmitSm.pdu()`` encodes the text itself and cannot carry an empty ``short_message`` beside
  a pre-encoded ``message_payload`` or our own UDH.
- Decoding is tolerant here: aiosmpplib's ``from_pdu`` raises on a command status, TON, NPI or
  data coding it does not know, decodes addresses as strict ASCII and reads a 16-bit UDH
  reference with the wrong width. A deliver_sm from a real SMSC must never be refused for its
  content, so bodies are parsed by :func:`parse_sm` and the text decoded by ``text.decode_text``.

Malformed framing (a length under 16 or over ``max_length``) raises :class:`MalformedPdu`: the
stream cannot be trusted after it and the session drops the connection. A well-framed PDU whose
body cannot be parsed raises :class:`MalformedPdu` from :func:`parse_sm` with the sequence
number, so the session can answer it with a generic_nack instead of dropping the bind.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from aiosmpplib.protocol import (
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    SmppMessage,
    SubmitSmResp,
    Unbind,
    UnbindResp,
)
from aiosmpplib.state import SmppCommandStatus

HEADER = struct.Struct("!IIII")
HEADER_LEN = 16
RESP = 0x80000000

# Command ids (SMPP 3.4 section 5.1.2.1).
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
QUERY_SM = 0x00000003
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
ENQUIRE_LINK = 0x00000015
OUTBIND = 0x0000000B
ALERT_NOTIFICATION = 0x00000102
GENERIC_NACK = 0x80000000
BIND_RECEIVER_RESP = BIND_RECEIVER | RESP
BIND_TRANSMITTER_RESP = BIND_TRANSMITTER | RESP
SUBMIT_SM_RESP = SUBMIT_SM | RESP
QUERY_SM_RESP = QUERY_SM | RESP
DELIVER_SM_RESP = DELIVER_SM | RESP
UNBIND_RESP = UNBIND | RESP
BIND_TRANSCEIVER_RESP = BIND_TRANSCEIVER | RESP
ENQUIRE_LINK_RESP = ENQUIRE_LINK | RESP
BINDS = {"transceiver": BIND_TRANSCEIVER, "transmitter": BIND_TRANSMITTER, "receiver": BIND_RECEIVER}

# Command statuses Parley decides on (section 5.1.3).
ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RSUBMITFAIL = 0x45
ESME_RTHROTTLED = 0x58
ESME_RQUERYFAIL = 0x67
ESME_RX_T_APPN = 0x64
ESME_RUNKNOWNERR = 0xFF

# Optional parameter tags (section 5.3.2).
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427

_BIND_CLASSES: dict[int, type[BindTransceiver]] = {
    BIND_TRANSCEIVER: BindTransceiver, BIND_TRANSMITTER: BindTransmitter, BIND_RECEIVER: BindReceiver,
}  # fmt: skip
_BIND_RESP_CLASSES: dict[int, type[BindTransceiverResp]] = {
    BIND_TRANSCEIVER_RESP: BindTransceiverResp,
    BIND_TRANSMITTER_RESP: BindTransmitterResp,
    BIND_RECEIVER_RESP: BindReceiverResp,
}
_COMMAND_NAMES = {
    BIND_RECEIVER: "bind_receiver", BIND_TRANSMITTER: "bind_transmitter", SUBMIT_SM: "submit_sm",
    DELIVER_SM: "deliver_sm", UNBIND: "unbind", BIND_TRANSCEIVER: "bind_transceiver",
    ENQUIRE_LINK: "enquire_link", GENERIC_NACK: "generic_nack", QUERY_SM: "query_sm", OUTBIND: "outbind",
}  # fmt: skip


class MalformedPdu(Exception):
    """A PDU that cannot be read. ``command_status`` is what a generic_nack should answer;
    ``seq`` is the PDU's sequence number (0 when the header itself was unreadable)."""

    def __init__(self, problem: str, *, command_status: int = ESME_RINVCMDLEN, seq: int = 0) -> None:
        super().__init__(problem)
        self.command_status = command_status
        self.seq = seq


def status_name(status: int) -> str:
    """``ESME_RTHROTTLED`` for 0x58; an unknown status as ``0x000000C4``."""
    try:
        return str(SmppCommandStatus(status).name)
    except ValueError:
        return f"0x{status:08X}"


def command_name(command_id: int) -> str:
    base = _COMMAND_NAMES.get(command_id & ~RESP if command_id != GENERIC_NACK else command_id)
    if base is None:
        return f"command 0x{command_id:08X}"
    return base + ("_resp" if command_id & RESP and command_id != GENERIC_NACK else "")


@dataclass(frozen=True)
class Pdu:
    """One framed PDU: the header's fields and the raw body."""

    command_id: int
    status: int
    seq: int
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESP)

    @property
    def name(self) -> str:
        return command_name(self.command_id)


async def read_pdu(reader: asyncio.StreamReader, max_length: int = 65536) -> Pdu:
    """The next PDU from ``reader``. Raises ``asyncio.IncompleteReadError`` at end of stream and
    :class:`MalformedPdu` when the length field cannot be right (the stream is lost then)."""
    header = await reader.readexactly(HEADER_LEN)
    length, command_id, status, seq = HEADER.unpack(header)
    if length < HEADER_LEN or length > max_length:
        raise MalformedPdu(f"command_length {length} outside 16..{max_length}", seq=seq)
    body = await reader.readexactly(length - HEADER_LEN) if length > HEADER_LEN else b""
    return Pdu(command_id, status, seq, body)


def frame(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
    return HEADER.pack(HEADER_LEN + len(body), command_id, status, seq) + body


def _aio(msg: SmppMessage) -> bytes:
    return bytes(msg.pdu())


# Control PDUs (aiosmpplib's classes) -------------------------------------------------------


def bind(
    command_id: int, seq: int, *, system_id: str, password: str, system_type: str = "",
    address_range: str = "",
) -> bytes:  # fmt: skip
    cls = _BIND_CLASSES[command_id]
    return _aio(
        cls(sequence_num=seq, system_id=system_id, password=password, system_type=system_type,
            address_range=address_range)
    )  # fmt: skip


def bind_resp(command_id: int, seq: int, status: int, system_id: str) -> bytes:
    """A bind_*_resp; ``command_id`` is the bind's (or its response's) id."""
    cls = _BIND_RESP_CLASSES[command_id | RESP]
    if status == ESME_ROK:
        return _aio(cls(sequence_num=seq, system_id=system_id))
    return frame(command_id | RESP, status, seq)  # an error bind_resp carries no body


def enquire_link(seq: int) -> bytes:
    return _aio(EnquireLink(sequence_num=seq))


def enquire_link_resp(seq: int) -> bytes:
    return _aio(EnquireLinkResp(sequence_num=seq))


def unbind(seq: int) -> bytes:
    return _aio(Unbind(sequence_num=seq))


def unbind_resp(seq: int) -> bytes:
    return _aio(UnbindResp(sequence_num=seq))


def generic_nack(seq: int, status: int) -> bytes:
    try:
        return _aio(GenericNack(sequence_num=seq, command_status=SmppCommandStatus(status)))
    except ValueError:
        return frame(GENERIC_NACK, status, seq)


def submit_sm_resp(seq: int, status: int, message_id: str = "") -> bytes:
    if status != ESME_ROK:
        return frame(SUBMIT_SM_RESP, status, seq)
    return _aio(SubmitSmResp(sequence_num=seq, message_id=message_id))


def deliver_sm_resp(seq: int, status: int = ESME_ROK) -> bytes:
    if status != ESME_ROK:
        return frame(DELIVER_SM_RESP, status, seq)
    return _aio(DeliverSmResp(sequence_num=seq))


def parse_bind(pdu: Pdu) -> tuple[str, str, str]:
    """(system_id, password, system_type) of a bind_* PDU."""
    r = _Reader(pdu)
    return r.cstring(), r.cstring(), r.cstring()


def parse_message_id(pdu: Pdu) -> str:
    """The message_id of a submit_sm_resp (empty for an error response without a body)."""
    if not pdu.body:
        return ""
    return _Reader(pdu).cstring()


def parse_system_id(pdu: Pdu) -> str:
    return _Reader(pdu).cstring() if pdu.body else ""


# query_sm (section 4.8) and outbind (section 4.1.7) -----------------------------------------


@dataclass(frozen=True)
class QueryAnswer:
    """A query_sm_resp: the message's id, when it reached its final state (an SMPP time, empty
    while it is not final), its message_state (section 5.2.28) and the network's error_code."""

    message_id: str
    final_date: str
    message_state: int
    error_code: int


def query_sm(seq: int, message_id: str, source: Address) -> bytes:
    """Ask the SMSC what became of ``message_id`` (``source``: the address it was sent from)."""
    body = _cstr(message_id) + bytes((source.ton, source.npi)) + _cstr(source.addr)
    return frame(QUERY_SM, ESME_ROK, seq, body)


def parse_query_sm(pdu: Pdu) -> tuple[str, Address]:
    r = _Reader(pdu)
    message_id = r.cstring(65)
    return message_id, Address(ton=r.octet(), npi=r.octet(), addr=r.cstring(21))


def query_sm_resp(seq: int, status: int, answer: QueryAnswer | None = None) -> bytes:
    if status != ESME_ROK or answer is None:
        return frame(QUERY_SM_RESP, status, seq)
    a = answer
    body = _cstr(a.message_id) + _cstr(a.final_date) + bytes((a.message_state, a.error_code))
    return frame(QUERY_SM_RESP, ESME_ROK, seq, body)


def parse_query_sm_resp(pdu: Pdu) -> QueryAnswer:
    r = _Reader(pdu)
    return QueryAnswer(r.cstring(65), r.cstring(17), r.octet(), r.octet())


def outbind(seq: int, system_id: str, password: str) -> bytes:
    """An SMSC's invitation to bind_receiver over the connection it opened."""
    return frame(OUTBIND, ESME_ROK, seq, _cstr(system_id) + _cstr(password))


def parse_outbind(pdu: Pdu) -> tuple[str, str]:
    """(system_id, password) of an outbind."""
    r = _Reader(pdu)
    return r.cstring(16), r.cstring(9)


# submit_sm / deliver_sm ---------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    addr: str
    ton: int = 1  # international
    npi: int = 1  # E.164


@dataclass(frozen=True)
class ShortMessage:
    """The fields of a submit_sm or deliver_sm that Parley uses (the rest are sent as 0/empty)."""

    source: Address
    dest: Address
    short_message: bytes = b""
    data_coding: int = 0
    esm_class: int = 0
    registered_delivery: int = 0
    service_type: str = ""
    protocol_id: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()
    #: 0..3; and the SMPP times (section 7.1.1, gateways/smpp/smpptime.py), "" for none.
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""

    @property
    def tlv(self) -> dict[int, bytes]:
        """The optional parameters by tag (the last wins if one repeats)."""
        return dict(self.tlvs)


def _cstr(s: str) -> bytes:
    return s.encode("ascii", "replace") + b"\x00"


def encode_sm(command_id: int, seq: int, sm: ShortMessage) -> bytes:
    """A submit_sm or deliver_sm carrying one pre-encoded segment."""
    if len(sm.short_message) > 254:
        raise ValueError(
            f"short_message is {len(sm.short_message)} octets (at most 254; use message_payload)"
        )
    body = b"".join(
        (
            _cstr(sm.service_type),
            bytes((sm.source.ton, sm.source.npi)), _cstr(sm.source.addr),
            bytes((sm.dest.ton, sm.dest.npi)), _cstr(sm.dest.addr),
            bytes((sm.esm_class, sm.protocol_id, sm.priority_flag)),
            _cstr(sm.schedule_delivery_time), _cstr(sm.validity_period),  # "": immediate, SMSC default
            bytes((sm.registered_delivery, 0, sm.data_coding, 0, len(sm.short_message))),
            sm.short_message,
            *_tlvs(sm.tlvs),
        )
    )  # fmt: skip
    return frame(command_id, ESME_ROK, seq, body)


def _tlvs(tlvs: Iterable[tuple[int, bytes]]) -> Iterable[bytes]:
    for tag, value in tlvs:
        yield struct.pack("!HH", tag, len(value)) + value


class _Reader:
    def __init__(self, pdu: Pdu) -> None:
        self.pdu = pdu
        self.b = pdu.body
        self.i = 0

    def fail(self, what: str) -> MalformedPdu:
        return MalformedPdu(
            f"{self.pdu.name} seq {self.pdu.seq}: {what} at body offset {self.i}",
            command_status=ESME_RINVMSGLEN, seq=self.pdu.seq,
        )  # fmt: skip

    def cstring(self, limit: int = 256) -> str:
        end = self.b.find(b"\x00", self.i, self.i + limit + 1)
        if end < 0:
            raise self.fail("C-octet string without its NUL")
        s = self.b[self.i : end].decode("ascii", "replace")
        self.i = end + 1
        return s

    def octet(self) -> int:
        if self.i >= len(self.b):
            raise self.fail("body ends early")
        v = self.b[self.i]
        self.i += 1
        return v

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.b):
            raise self.fail(f"{n} octets announced, {len(self.b) - self.i} left")
        v = self.b[self.i : self.i + n]
        self.i += n
        return v


def parse_sm(pdu: Pdu) -> ShortMessage:
    """Read a submit_sm or deliver_sm body. Unknown TON/NPI/data coding values are kept as they
    are (never an error); only a body that is cut short or lacks a NUL raises MalformedPdu."""
    r = _Reader(pdu)
    service_type = r.cstring(6)
    src = Address(ton=r.octet(), npi=r.octet(), addr=r.cstring(65))
    dst = Address(ton=r.octet(), npi=r.octet(), addr=r.cstring(65))
    esm_class, protocol_id = r.octet(), r.octet()
    priority_flag = r.octet()
    schedule_delivery_time = r.cstring(17)
    validity_period = r.cstring(17)
    registered_delivery = r.octet()
    r.octet()  # replace_if_present_flag
    data_coding = r.octet()
    r.octet()  # sm_default_msg_id
    short_message = r.take(r.octet())
    tlvs: list[tuple[int, bytes]] = []
    while r.i < len(r.b):
        head = r.take(4)
        tag, length = struct.unpack("!HH", head)
        tlvs.append((tag, r.take(length)))
    return ShortMessage(
        source=src, dest=dst, short_message=short_message, data_coding=data_coding, esm_class=esm_class,
        registered_delivery=registered_delivery, service_type=service_type, protocol_id=protocol_id,
        tlvs=tuple(tlvs), priority_flag=priority_flag, schedule_delivery_time=schedule_delivery_time,
        validity_period=validity_period,
    )  # fmt: skip
