"""SMPP 3.4 message text: our text into submit_sm segments, and a deliver_sm's bytes back into text.

Sending: the alphabet and the cut points are ``engine.core.sms``'s, so what goes on the air is what
the rate limiter charged. GSM 03.38 (data coding 0) when every character is in the default
alphabet or its extension table, written unpacked, one septet an octet, an extension character
as ESC (0x1B) and the character, by aiosmpplib's ``gsm0338`` codec; otherwise UCS-2 (data coding
8) as UTF-16-BE, a character outside the BMP a surrogate pair. A text that fits one SMS (160
septets, 70 units) is one segment without a header. A longer one is concatenated in one of
:data:`CONCAT_MODES`:

- ``udh8``: a user data header ``05 00 03 ref total seq`` (esm_class 0x40), 153 septets or 67
  units a part: the carrier arithmetic ``engine.core.sms.encoding_of`` counts.
- ``udh16``: ``06 08 04 ref_hi ref_lo total seq``, one octet longer, so 152 septets or 66 units.
- ``sar``: no header; the sar_msg_ref_num / sar_total_segments / sar_segment_seqnum TLVs, 153 or
  67 a part (the SMSC builds the header it needs).
- ``payload``: one submit_sm, an empty short_message and the whole text in message_payload; the
  SMSC cuts it (and costs what ``udh8`` would).

An escape pair or a surrogate pair is never split across parts. More than 255 parts cannot be
numbered and is refused (ValueError).

Receiving: :func:`parse_udh` and :func:`concat_from_tlvs` find the concatenation facts and
:func:`decode_text` reads the bytes for a data coding. Neither refuses anything a real SMSC may
send: a header that does not parse is left in the text, bytes that do not decode become U+FFFD
(or ``?`` in GSM), an unknown data coding is read as UTF-8, else Latin-1. A text is never refused
for its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiosmpplib.codec import find_codec_info

from engine.core.sms import MULTI, SINGLE, split_sizes, unit_sizes
from gateways.smpp import pdu

CONCAT_MODES = ("udh8", "udh16", "sar", "payload")
#: What data coding 0 ("SMSC default alphabet") means on a given SMSC.
DEFAULT_CODINGS = ("gsm0338", "latin_1", "ascii")

GSM7 = 0x00
ASCII = 0x01
OCTET_A = 0x02
LATIN_1 = 0x03
OCTET_B = 0x04
UCS2 = 0x08

UDHI = 0x40  # esm_class: short_message starts with a user data header
MAX_PARTS = 255

SAR_MSG_REF_NUM = pdu.TAG_SAR_MSG_REF_NUM
SAR_TOTAL_SEGMENTS = pdu.TAG_SAR_TOTAL_SEGMENTS
SAR_SEGMENT_SEQNUM = pdu.TAG_SAR_SEGMENT_SEQNUM
MESSAGE_PAYLOAD = pdu.TAG_MESSAGE_PAYLOAD

IE_CONCAT_8 = 0x00
IE_CONCAT_16 = 0x08

#: Units a part when a header takes room: udh16's header is an octet longer than udh8's.
ROOM = {
    "udh8": MULTI,
    "udh16": {"GSM-7": 152, "UCS-2": 66},
    "sar": MULTI,
    "payload": MULTI,
}

_GSM = find_codec_info("gsm0338")


@dataclass(frozen=True)
class Segment:
    """One submit_sm's worth of text."""

    data_coding: int
    #: 0x40 when ``short_message`` starts with a UDH, else 0.
    esm_class: int
    short_message: bytes
    #: (tag, value) pairs to add to the PDU, in order.
    tlvs: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class Concat:
    """A part of a concatenated message: ``seq`` (1-based) of ``total``, tied together by ``ref``."""

    ref: int
    total: int
    seq: int


def _check_mode(concat: str) -> None:
    if concat not in CONCAT_MODES:
        raise ValueError(f"concat must be one of {', '.join(CONCAT_MODES)}, got {concat!r}")


def _parts(text: str, concat: str) -> tuple[str, list[str]]:
    """The alphabet and ``text`` cut into the parts ``concat`` sends (one part when it fits)."""
    name, sizes = unit_sizes(text)
    if sum(sizes) <= SINGLE[name]:
        return name, [text]
    parts, i = [], 0
    for count in split_sizes(sizes, ROOM[concat][name]):
        parts.append(text[i : i + count])
        i += count
    return name, parts


def _encode(name: str, text: str) -> bytes:
    if name == "GSM-7":
        data: bytes = _GSM.encode(text, "strict")[0]
        return data
    # surrogatepass: a lone surrogate (not a character, but a str may hold one) is one unit.
    return text.encode("utf-16-be", errors="surrogatepass")


def segments_cost(text: str, concat: str) -> int:
    """How many SMS ``text`` takes on the air when sent in ``concat`` mode (``payload``: what
    ``udh8`` would need, since the SMSC cuts it the same way). An empty text is still one SMS."""
    _check_mode(concat)
    return len(_parts(text, concat)[1])


def encode_message(text: str, *, concat: str = "udh8", ref: int = 0) -> list[Segment]:
    """``text`` as the submit_sm segments to send, in order; ``ref`` ties the parts of a
    concatenated message together (udh8 keeps its low 8 bits, udh16 and sar 16)."""
    _check_mode(concat)
    name, parts = _parts(text, concat)
    if len(parts) > MAX_PARTS:
        raise ValueError(
            f"text too long: {len(text)} characters need {len(parts)} parts, at most {MAX_PARTS}"
        )
    coding = GSM7 if name == "GSM-7" else UCS2
    if concat == "payload" and len(parts) > 1:
        return [Segment(coding, 0, b"", ((MESSAGE_PAYLOAD, _encode(name, text)),))]
    if len(parts) == 1:
        return [Segment(coding, 0, _encode(name, text))]
    total = len(parts)
    out: list[Segment] = []
    for seq, part in enumerate(parts, start=1):
        body = _encode(name, part)
        if concat == "udh8":
            udh = bytes((0x05, IE_CONCAT_8, 0x03, ref & 0xFF, total, seq))
            out.append(Segment(coding, UDHI, udh + body))
        elif concat == "udh16":
            udh = bytes((0x06, IE_CONCAT_16, 0x04, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))
            out.append(Segment(coding, UDHI, udh + body))
        else:
            tlvs = (
                (SAR_MSG_REF_NUM, (ref & 0xFFFF).to_bytes(2, "big")),
                (SAR_TOTAL_SEGMENTS, bytes((total,))),
                (SAR_SEGMENT_SEQNUM, bytes((seq,))),
            )
            out.append(Segment(coding, 0, body, tlvs))
    return out


def _sane(ref: int, total: int, seq: int) -> Concat | None:
    return Concat(ref, total, seq) if total >= 1 and 1 <= seq <= total else None


def parse_udh(esm_class: int, sm: bytes) -> tuple[Concat | None, bytes]:
    """The concatenation facts in ``sm``'s user data header (when ``esm_class`` says there is
    one) and the user data after it. A header that does not parse (its length or an element's
    running past the data) is left in place: ``(None, sm)``. A concatenation element with a
    total or sequence number of 0, or a sequence number past the total, gives no Concat, but
    the header is still taken off."""
    if not esm_class & UDHI or not sm:
        return None, sm
    end = 1 + sm[0]
    if end > len(sm):
        return None, sm
    found: Concat | None = None
    seen = False
    i = 1
    while i < end:
        if i + 2 > end or i + 2 + sm[i + 1] > end:
            return None, sm
        iei, length = sm[i], sm[i + 1]
        value = sm[i + 2 : i + 2 + length]
        if not seen and iei == IE_CONCAT_8 and length == 3:
            seen, found = True, _sane(value[0], value[1], value[2])
        elif not seen and iei == IE_CONCAT_16 and length == 4:
            seen, found = True, _sane(int.from_bytes(value[:2], "big"), value[2], value[3])
        i += 2 + length
    return found, sm[end:]


def concat_from_tlvs(tlvs: Mapping[int, bytes]) -> Concat | None:
    """The concatenation facts in a PDU's SAR TLVs; None unless all three are there and make
    sense (a total of at least 1, a sequence number from 1 to the total)."""
    try:
        ref, total, seq = (tlvs[t] for t in (SAR_MSG_REF_NUM, SAR_TOTAL_SEGMENTS, SAR_SEGMENT_SEQNUM))
    except KeyError:
        return None
    return _sane(int.from_bytes(ref, "big"), int.from_bytes(total, "big"), int.from_bytes(seq, "big"))


def _gsm(data: bytes) -> str:
    text: str = _GSM.decode(data, "replace")[0]
    return text


def _octets(data: bytes) -> str:
    """Octet-unspecified data: UTF-8 when it is, else Latin-1 (which takes any byte)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_text(data_coding: int, data: bytes, *, default: str = "gsm0338") -> str:
    """``data`` (a short_message after its header, or a message_payload) read as ``data_coding``
    says; never raises. Data coding 0 is read as ``default`` (one of :data:`DEFAULT_CODINGS`;
    anything else counts as gsm0338), 1 as ASCII, 3 as Latin-1, 8 as UTF-16-BE, 2 and 4 (octets)
    as UTF-8 when they are, else Latin-1. Other values follow GSM 03.38's data coding scheme:
    the general group (0x00-0x3F) by its alphabet bits 3..2 (00 GSM-7, 01 octets, 10 UCS-2) and
    the 0xF0-0xFF group by bit 2 (set: octets, else GSM-7). Anything else (a reserved alphabet, a
    message waiting group, an unknown value) is read as octets. GSM-7 is unpacked, one septet an
    octet; a byte it has no character for becomes ``?``."""
    data = bytes(data)
    if data_coding == GSM7:
        if default == "latin_1":
            return data.decode("latin-1")
        if default == "ascii":
            return data.decode("ascii", errors="replace")
        return _gsm(data)
    if data_coding == ASCII:
        return data.decode("ascii", errors="replace")
    if data_coding == LATIN_1:
        return data.decode("latin-1")
    if data_coding == UCS2:
        return data.decode("utf-16-be", errors="replace")
    if data_coding in (OCTET_A, OCTET_B):
        return _octets(data)
    if 0x00 <= data_coding <= 0x3F:
        alphabet = data_coding & 0x0C
        if alphabet == 0x00:
            return _gsm(data)
        if alphabet == 0x08:
            return data.decode("utf-16-be", errors="replace")
        return _octets(data)  # 0x04: 8-bit; 0x0C: reserved
    if 0xF0 <= data_coding <= 0xFF:
        return _octets(data) if data_coding & 0x04 else _gsm(data)
    return _octets(data)
