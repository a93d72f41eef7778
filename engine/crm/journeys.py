"""Journeys: one ``POST /v1/flows/{flow}/start`` for a list of contacts or an audience, now or at
a time, split into arms and a holdout, each start tracked under its own id.

- **Audience**: conditions on contact fields (the flows' ``when:`` syntax, ``contact.*`` only),
  evaluated over every contact, read in order from the listing index (engine/crm/listing.py;
  a saved segment's tags and consent use their own index members).
- **send_at**: an ISO 8601 time. With a zone (``Z``, ``+01:00``) it is one instant for everyone;
  without one it is a wall-clock time in each contact's zone (the contact's ``timezone``, else the
  number's only zone, else ``governance.default_timezone``). A start due later waits as a timer
  of kind ``d`` carrying the start event (the one quiet hours use), so it is ordered with the
  contact's texts and passes the governance gate when it fires, not when it was asked for.
- **Arms and holdout**: ``experiment`` (default ``<flow>``) names the assignment. A contact's
  bucket is a hash of (experiment, number): deterministic, so the same contact lands in the same
  arm every time, and kept (``p:xa:EXPERIMENT``) so changing the weights later does not move
  anyone already assigned. The holdout gets nothing; every assignment (holdout included) is an
  ``assigned`` outcome event, so conversions can be compared (engine/crm/reports.py).
- Every start gets an id (``st-…``); its request-time counts are kept in ``p:start:ID`` and the
  turns' outcomes (started, skipped, deferred) carry the id, so ``GET /v1/starts/{id}`` adds them
  up. An arm's ``params`` are merged over the start's; the journey's own bookkeeping rides in
  ``params._start`` (a name templates have no reason to use).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.core.errors import Unprocessable
from engine.core.ports import Services
from engine.crm import listing
from engine.crm.listing import ContactFilter
from engine.flows.conditions import Condition, compile_condition
from engine.flows.reply_tests import TestArgError
from engine.governance.quiet import QuietHours


class JourneyServices(Services, Protocol):
    """What selecting and timing a journey's sends uses: the services and the quiet hours."""

    @property
    def quiet(self) -> QuietHours: ...


HOLDOUT = "holdout"
#: The one arm of a start with a holdout and no ``arms``.
TREATED = "treated"
#: How long a start's request-time record is kept (its outcomes are in the p:fx:T).
START_TTL_S = 90 * 86400


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    experiment: str
    holdout: float  # 0..1
    arms: tuple[Arm, ...]

    def bucket(self, number: str) -> float:
        """Where ``number`` falls in [0, 1) for this experiment (stable across runs and hosts)."""
        h = hashlib.blake2b(f"{self.experiment}\x00{number}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64

    def assign(self, number: str) -> str:
        b = self.bucket(number)
        if b < self.holdout:
            return HOLDOUT
        if not self.arms:
            return TREATED
        # The rest of the unit interval, split by weight.
        at = (b - self.holdout) / (1 - self.holdout) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            if at < arm.weight:
                return arm.name
            at -= arm.weight
        return self.arms[-1].name


def parse_split(flow: str, body: dict[str, Any]) -> Split | None:
    """``holdout`` (percent), ``arms`` and ``experiment`` from a start body; None when neither."""
    holdout, arms = body.get("holdout", 0), body.get("arms")
    if not holdout and arms is None:
        return None
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 100:
        raise Unprocessable("holdout", "must be a percentage from 0 to under 100")
    parsed: list[Arm] = []
    for i, a in enumerate(arms or []):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            raise Unprocessable(f"arms[{i}].name", "each arm needs a name")
        if a["name"] == HOLDOUT or a["name"] in {p.name for p in parsed}:
            raise Unprocessable(f"arms[{i}].name", f"{a['name']!r} is taken")
        w = a.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, int | float) or w <= 0:
            raise Unprocessable(f"arms[{i}].weight", "must be a number above 0")
        if not isinstance(a.get("params", {}), dict):
            raise Unprocessable(f"arms[{i}].params", "must be an object")
        parsed.append(Arm(a["name"], float(w), a.get("params", {})))
    experiment = body.get("experiment", flow)
    if not isinstance(experiment, str) or not experiment or "|" in experiment:
        raise Unprocessable("experiment", "must be a name")
    return Split(experiment, float(holdout) / 100, tuple(parsed))


def parse_audience(raw: Any) -> list[Condition]:
    if not isinstance(raw, list) or not raw:
        raise Unprocessable(
            "audience", "must be a non-empty list of conditions like {field: contact.city, equals: Leeds}"
        )
    out = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or not str(spec.get("field", "")).startswith("contact."):
            raise Unprocessable(f"audience[{i}].field", "must be a contact field path (contact.NAME)")
        try:
            out.append(compile_condition(spec))
        except TestArgError as exc:
            raise Unprocessable(f"audience[{i}]", str(exc)) from None
    return out


async def select(rt: JourneyServices, conditions: list[Condition]) -> list[str]:
    """Every contact for which all ``conditions`` hold (numbers, oldest first), read from the
    contacts' listing index a page at a time (engine/crm/listing.py), not by a scan."""
    f = ContactFilter(tuple(conditions))
    return [c.number async for c, _ in listing.every(rt.store, rt.config.engine.shards, f)]


def parse_send_at(raw: Any) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise Unprocessable(
            "send_at", "must be an ISO 8601 time like 2026-12-02T10:00 or 2026-12-02T10:00:00Z"
        )
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Unprocessable("send_at", f"{raw!r} is not an ISO 8601 time") from None


def due_ms(rt: JourneyServices, send_at: datetime, number: str, contact_tz: str | None) -> int:
    """The instant ``send_at`` means for this contact (a naive time is their local time)."""
    if send_at.tzinfo is None:
        send_at = send_at.replace(tzinfo=rt.quiet.zone_of(number, contact_tz))
    return int(send_at.astimezone(UTC).timestamp() * 1000)


def new_start_id(now_ms: int) -> str:
    return f"st-{now_ms}-{secrets.token_hex(3)}"
