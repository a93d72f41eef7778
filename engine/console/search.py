"""What the Conversations page's search box means: a phone number (that contact), ``field=value``
(contacts whose field holds the value), or words (contacts whose name holds them).

Field and name searches walk the listing index (engine/crm/listing.py) a page at a time, as
``GET /v1/contacts?where=...`` does: the index orders contacts, the filter is checked on each
contact read, and a page examines a bounded number of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.core.numbers import InvalidNumber, to_e164
from engine.crm.listing import ContactFilter
from engine.flows.conditions import Condition
from engine.flows.text import fold

#: Looks like a phone number (digits, a leading +, spaces and the usual punctuation).
NUMBER_LIKE = re.compile(r"^\+?[\d][\d\s().-]{4,}$")
FIELD_SEARCH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,63})\s*[=:]\s*(.+)$")
MAX_QUERY = 200


@dataclass(frozen=True)
class Search:
    """A parsed query: ``number`` (E.164) or a filter with what it says, or ``problem``."""

    number: str | None = None
    filter: ContactFilter | None = None
    says: str = ""
    problem: str = ""


def _name_holds(words: str) -> Condition:
    """Every word appears in a field whose name has ``name`` in it (first_name, last_name,
    name, company_name...), case and accents aside."""
    wanted = fold(words).split()

    def check(data: dict[str, Any]) -> bool:
        c = data.get("contact") or {}
        names = " ".join(fold(str(v)) for k, v in c.items() if "name" in k and isinstance(v, str))
        return bool(names) and all(w in names for w in wanted)

    return check


def _field_holds(field: str, value: str) -> Condition:
    """The field equals ``value``, or holds it (text containing it, a list with it)."""
    want = fold(value)

    def check(data: dict[str, Any]) -> bool:
        v = (data.get("contact") or {}).get(field)
        if isinstance(v, list):
            return any(fold(str(x)) == want for x in v)
        return v is not None and want in fold(str(v))

    return check


def parse(query: str, region: str) -> Search:
    """What ``query`` asks for (``region``: numbers.default_region, for national numbers)."""
    q = query.strip()
    if len(q) > MAX_QUERY:
        return Search(problem=f"the search is longer than {MAX_QUERY} characters")
    if NUMBER_LIKE.match(q):
        try:
            return Search(number=to_e164(q, region))
        except InvalidNumber as exc:
            return Search(problem=f"{q!r} is not a phone number: {exc}")
    m = FIELD_SEARCH.match(q)
    if m:
        field, value = m.group(1), m.group(2).strip()
        return Search(filter=ContactFilter((_field_holds(field, value),)), says=f"{field} holds “{value}”")
    if not fold(q):
        return Search(problem="type a number, a name, or field=value")
    return Search(filter=ContactFilter((_name_holds(q),)), says=f"name holds “{q}”")
