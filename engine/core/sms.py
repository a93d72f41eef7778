"""SMS encoding facts: which alphabet a text needs and how many segments it costs.

GSM 03.38 (GSM-7) when every character is in the default alphabet or its extension table (the
extension characters ``^{}\\[~]|€`` and form feed take two septets, an escape and the character);
otherwise UCS-2 (UTF-16 code units; a character outside the BMP, like most emoji, takes two).
One segment holds 160 septets or 70 UCS-2 units; a concatenated message loses room to its UDH
header: 153 septets or 67 units a segment, and an escape pair or a surrogate pair is never split
across two segments.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

SINGLE = {"GSM-7": 160, "UCS-2": 70}
MULTI = {"GSM-7": 153, "UCS-2": 67}


@dataclass(frozen=True)
class Encoding:
    name: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def unit_sizes(text: str) -> tuple[str, list[int]]:
    """The alphabet ``text`` needs ("GSM-7" or "UCS-2") and each character's size in its units."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        return "GSM-7", [2 if c in GSM7_EXTENSION else 1 for c in text]
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def encoding_of(text: str) -> Encoding:
    """The alphabet ``text`` needs, its length in that alphabet's units, and its segment count."""
    name, sizes = unit_sizes(text)
    units = sum(sizes)
    if units <= SINGLE[name]:
        return Encoding(name, units, 1 if units else 0)
    return Encoding(name, units, len(split_sizes(sizes, MULTI[name])))


def split_sizes(sizes: list[int], room: int) -> list[int]:
    """Greedy packing of characters (by unit size) into segments of ``room`` units, never
    splitting one character; returns how many characters go in each segment."""
    counts: list[int] = []
    used = n = 0
    for size in sizes:
        if used + size > room:
            counts.append(n)
            used = n = 0
        used += size
        n += 1
    if n:
        counts.append(n)
    return counts


def split(text: str) -> list[str]:
    """``text`` cut into the segments a carrier would deliver (no UDH bytes, just the text)."""
    enc = encoding_of(text)
    if enc.segments <= 1:
        return [text] if text else []
    _, sizes = unit_sizes(text)
    out, i = [], 0
    for count in split_sizes(sizes, MULTI[enc.name]):
        out.append(text[i : i + count])
        i += count
    return out
