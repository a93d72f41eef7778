"""Campaigns: flows started relative to a date in each contact's record (RapidPro's campaigns).

A campaign is a name and a list of events; each event starts a flow relative to a contact
field: ``offset: -24h`` from ``appointment_at``, ``offset: 3d`` after ``delivered_at``, at a
local time of day (``at: "09:00"``, in the contact's zone), or recurring (``every: month`` on
``renewal_day``, ``every: year`` on ``birthday``). This module is the language and the date
arithmetic, pure (no I/O): the turn and engine/crm/campaigns.py hand it the contact's fields,
its zone and the time.

Each (contact, campaign, event) has at most one pending fire: a timer of kind ``k`` in the
contact's shard's timers zset (``N|k|CAMPAIGN:EVENT`` -> due ms, engine/core/keys.py). Its
score is rewritten whenever the field is written, so nothing ever scans the contacts to find
what is due; when it fires, the turn starts the flow as a journey start (the governance gate
applies then) and schedules the next occurrence of a recurring event.

Times, for an event with ``offset`` O and field value V, in zone Z:

- V a date (``2026-03-10``), or an occurrence of a recurring event: the base is local
  midnight of that date in Z; V a time with a zone (``2026-03-10T14:30:00Z``) is that instant;
  without one (``2026-03-10T14:30``) it is a wall-clock time in Z.
- without ``at``: fire = base + O (O in minutes, hours, days or weeks; elapsed time).
- with ``at``: fire = ``at`` on the local date of the base plus O days (O in whole days or
  weeks), so "3 days after, at 10:00" is 10:00 whatever the clock change between.
- ``every: month``: V is a day of the month (1-31, or a date whose day is taken); a month
  shorter than it uses its last day. ``every: year``: V is a date (``1990-05-17`` or
  ``05-17``); 29 February falls on the 28th in other years.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import yaml

from engine.core import keys
from engine.core.errors import FlowError, FlowErrors
from engine.flows import yamlsrc

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
OFFSET_RE = re.compile(r"^([+-]?)(\d{1,6})\s*(m|h|d|w)$")
AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
EVERY = ("month", "year")
EVENT_KEYS = frozenset({"id", "flow", "field", "offset", "at", "every", "interrupt"})
CAMPAIGN_KEYS = frozenset({"campaign", "description", "events"})
MAX_EVENTS = 20
#: The timer kind of a campaign's pending fire.
TIMER_KIND = "k"
#: An occurrence found due more than this late (workers down, a backlog) is skipped, not sent:
#: "your appointment is tomorrow" must not arrive after the appointment.
LATE_MS = 86_400_000


@dataclass(frozen=True)
class CampaignEvent:
    id: str
    flow: str
    field: str
    #: Seconds (whole days when ``at`` is set).
    offset_s: int = 0
    at: time | None = None
    every: str | None = None
    #: Start even when the contact is in another conversation (which ends ``interrupted``).
    interrupt: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "flow": self.flow, "field": self.field,
                               "offset": _offset_text(self.offset_s)}  # fmt: skip
        if self.at is not None:
            out["at"] = self.at.strftime("%H:%M")
        if self.every is not None:
            out["every"] = self.every
        if self.interrupt:
            out["interrupt"] = True
        return out


@dataclass(frozen=True)
class Campaign:
    name: str
    events: tuple[CampaignEvent, ...]
    description: str = ""
    #: ``file`` (a YAML file beside the flows) or ``api`` (PUT /v1/campaigns/{name}).
    source: str = "api"
    path: str = ""
    digest: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "digest": self.digest, "events": [e.as_json() for e in self.events],
        }  # fmt: skip


def _offset_text(seconds: int) -> str:
    """The offset as written (``-24h`` reads back as ``-1d``; none as ``0d``)."""
    if seconds == 0:
        return "0d"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    for unit in ("w", "d", "h"):
        if s and s % UNIT_S[unit] == 0:
            return f"{sign}{s // UNIT_S[unit]}{unit}"
    return f"{sign}{s // 60}m"


# -- the language ------------------------------------------------------------------------------


@dataclass
class Problems:
    """Every problem of one definition: (path like ``events[0].offset``, line or None, message)."""

    found: list[tuple[str, int | None, str]] = field(default_factory=list)

    def add(self, path: str, line: int | None, message: str) -> None:
        self.found.append((path, line, message))


def _line(d: Any, key: str) -> int | None:
    return d.line_of(key) if isinstance(d, yamlsrc.LineDict) else None


def parse(
    name: str, data: Any, problems: Problems, *, flows: set[str] | None = None, source: str = "api"
) -> Campaign | None:
    """A campaign from its definition (a YAML file's mapping, or an API body); None with every
    problem noted when it is not valid. ``flows``: the loaded flow names an event may start."""
    if not isinstance(data, dict):
        problems.add("", None, "a campaign is a mapping with events")
        return None
    for k in data:
        if k not in CAMPAIGN_KEYS:
            problems.add(
                str(k), _line(data, k), f"unknown key {k!r} (expected {', '.join(sorted(CAMPAIGN_KEYS))})"
            )
    desc = data.get("description", "")
    if not isinstance(desc, str):
        problems.add("description", _line(data, "description"), "must be text")
    raw = data.get("events")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_EVENTS:
        problems.add("events", _line(data, "events") or getattr(data, "line", None),
                     f"must be a list of 1 to {MAX_EVENTS} events")  # fmt: skip
        return None
    events: list[CampaignEvent] = []
    seen: set[str] = set()
    for i, e in enumerate(raw):
        ev = _event(f"events[{i}]", e, problems, flows)
        if ev is None:
            continue
        if ev.id in seen:
            problems.add(f"events[{i}].id", _line(e, "id"), f"event id {ev.id!r} is used twice")
        seen.add(ev.id)
        events.append(ev)
    if problems.found:
        return None
    body = orjson.dumps(
        {"description": desc, "events": [e.as_json() for e in events]}, option=orjson.OPT_SORT_KEYS
    )
    digest = hashlib.blake2b(body, digest_size=6).hexdigest()
    return Campaign(name, tuple(events), str(desc), source, digest=digest)


def _event(path: str, e: Any, problems: Problems, flows: set[str] | None) -> CampaignEvent | None:
    if not isinstance(e, dict):
        problems.add(path, None, "an event is a mapping with flow, field and offset or every")
        return None
    before = len(problems.found)
    line = getattr(e, "line", None)
    for k in e:
        if k not in EVENT_KEYS:
            problems.add(
                f"{path}.{k}", _line(e, k), f"unknown key {k!r} (expected {', '.join(sorted(EVENT_KEYS))})"
            )
    flow = e.get("flow")
    if not isinstance(flow, str) or not flow:
        problems.add(f"{path}.flow", _line(e, "flow") or line, "must name the flow to start")
    elif flows is not None and flow not in flows:
        problems.add(f"{path}.flow", _line(e, "flow"), f"flow {flow!r} is not loaded")
    fld = e.get("field")
    if not isinstance(fld, str) or not FIELD_RE.match(fld):
        problems.add(
            f"{path}.field", _line(e, "field") or line, "must name a contact field (letters, digits, _)"
        )
    eid = e.get("id", flow)
    if not isinstance(eid, str) or not NAME_RE.match(eid):
        why = "must be a name: lower-case letters, digits, _ and - (default: the flow's name)"
        problems.add(f"{path}.id", _line(e, "id") or line, why)
    every = e.get("every")
    if every is not None and every not in EVERY:
        problems.add(f"{path}.every", _line(e, "every"), "must be month or year")
    at: time | None = None
    if "at" in e:
        m = AT_RE.match(str(e["at"])) if isinstance(e["at"], str) else None
        if m is None:
            problems.add(f"{path}.at", _line(e, "at"), 'must be a local time of day like "09:00" (quoted)')
        else:
            at = time(int(m[1]), int(m[2]))
    offset_s = 0
    raw_off = e.get("offset", 0)  # on the date itself
    if raw_off != 0 or isinstance(raw_off, bool):
        m = OFFSET_RE.match(str(raw_off).strip()) if isinstance(raw_off, str) else None
        if m is None:
            problems.add(f"{path}.offset", _line(e, "offset"),
                         "must be a signed amount of m, h, d or w, like -24h or 3d")  # fmt: skip
        else:
            offset_s = (-1 if m[1] == "-" else 1) * int(m[2]) * UNIT_S[m[3]]
            if at is not None and m[3] not in ("d", "w"):
                problems.add(
                    f"{path}.offset", _line(e, "offset"), "with at, the offset is in whole days (d or w)"
                )
    interrupt = e.get("interrupt", False)
    if not isinstance(interrupt, bool):
        problems.add(f"{path}.interrupt", _line(e, "interrupt"), "must be true or false")
    if len(problems.found) > before:
        return None
    assert isinstance(eid, str) and isinstance(flow, str) and isinstance(fld, str)
    return CampaignEvent(eid, flow, fld, offset_s, at, every, bool(interrupt))


def load_file(path: Path, flows: set[str] | None) -> Campaign:
    """One campaign file; :class:`FlowErrors` names ``file:line`` for every problem."""
    file = str(path)
    try:
        data = yamlsrc.load(path.read_text(encoding="utf-8"))
    except (yamlsrc.DuplicateKey, yamlsrc.TooDeep, yamlsrc.TooLarge) as exc:
        raise FlowErrors([FlowError(file, exc.line, None, str(exc))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise FlowErrors(
            [FlowError(file, mark.line + 1 if mark else None, None, f"YAML: {exc.problem}")]
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FlowErrors([FlowError(file, None, None, f"cannot read: {exc}")]) from None
    problems = Problems()
    name = data.get("campaign") if isinstance(data, dict) else None
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.add("campaign", _line(data, "campaign") or getattr(data, "line", None),
                     "must be a name (lower-case letters, digits, _ and -)")  # fmt: skip
        name = path.stem
    camp = parse(name, data, problems, flows=flows, source="file")
    if camp is None or problems.found:
        raise FlowErrors([FlowError(file, line, None, f"campaign {name!r}: {p}: {msg}" if p else msg)
                          for p, line, msg in problems.found])  # fmt: skip
    return Campaign(camp.name, camp.events, camp.description, "file", file, camp.digest)


def load_dir(root: Path, flows: set[str] | None) -> dict[str, Campaign]:
    """Every ``*.yaml`` in ``root`` (none if it does not exist); all problems at once."""
    out: dict[str, Campaign] = {}
    errors: list[FlowError] = []
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")):
        try:
            c = load_file(path, flows)
        except FlowErrors as exc:
            errors.extend(exc.errors)
            continue
        if c.name in out:
            errors.append(
                FlowError(str(path), None, None, f"campaign {c.name!r} is also defined in {out[c.name].path}")
            )
        out[c.name] = c
    if errors:
        raise FlowErrors(errors)
    return out


# -- dates -------------------------------------------------------------------------------------


def _ms(d: datetime) -> int:
    return int(d.astimezone(UTC).timestamp() * 1000)


def _wall(day: date, at: time, zone: ZoneInfo) -> datetime:
    """``at`` on ``day`` in ``zone``, normalised (a time skipped by a clock change moves on)."""
    return datetime.combine(day, at, zone).astimezone(UTC).astimezone(zone)


def _fire(ev: CampaignEvent, base: datetime, zone: ZoneInfo) -> int:
    if ev.at is not None:
        day = base.astimezone(zone).date() + timedelta(seconds=ev.offset_s)
        return _ms(_wall(day, ev.at, zone))
    return _ms(base) + ev.offset_s * 1000


def _one_off_base(value: Any, zone: ZoneInfo) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value.strip().replace("Z", "+00:00").replace(" ", "T", 1)
    try:
        if len(text) == 10:
            return _wall(date.fromisoformat(text), time(0), zone)
        d = datetime.fromisoformat(text)
    except ValueError:
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=zone)


def _day_of_month(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        v = value.strip()
        if len(v) == 10:
            try:
                return date.fromisoformat(v).day
            except ValueError:
                return None
        value = int(v) if v.isdigit() else None
    return value if isinstance(value, int) and 1 <= value <= 31 else None


def _month_day(value: Any) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    v = value.strip()[:10]
    try:
        if len(v) == 10:
            d = date.fromisoformat(v)
            return d.month, d.day
        if len(v) == 5 and v[2] == "-":
            m, d2 = int(v[:2]), int(v[3:])
            date(2000, m, d2)  # a leap year: 02-29 is a valid birthday
            return m, d2
    except ValueError:
        return None
    return None


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _occurrences(ev: CampaignEvent, value: Any, zone: ZoneInfo, around: int) -> list[int]:
    """The fire times of this event for this field value near ``around`` (ms), in order: the
    one fire of a one-off event, or the recurring ones from a period before to two after."""
    if ev.every is None:
        base = _one_off_base(value, zone)
        return [] if base is None else [_fire(ev, base, zone)]
    local = datetime.fromtimestamp(around / 1000, UTC).astimezone(zone).date()
    # Offsets up to a few weeks either way: look one period further each side than needed.
    span = 2 + abs(ev.offset_s) // (28 * 86400 if ev.every == "month" else 365 * 86400)
    days: list[date] = []
    if ev.every == "month":
        dom = _day_of_month(value)
        if dom is None:
            return []
        for k in range(-span, span + 1):
            y, m = divmod(local.year * 12 + local.month - 1 + k, 12)
            days.append(_clamped(y, m + 1, dom))
    else:
        md = _month_day(value)
        if md is None:
            return []
        days = [_clamped(local.year + k, *md) for k in range(-span, span + 1)]
    return sorted(_fire(ev, _wall(d, time(0), zone), zone) for d in days)


def next_fire(ev: CampaignEvent, value: Any, zone: ZoneInfo, after: int) -> int | None:
    """The first fire strictly after ``after`` (ms); None when there is none (a past one-off,
    a field empty or unreadable)."""
    return next((t for t in _occurrences(ev, value, zone, after) if t > after), None)


def last_fire(ev: CampaignEvent, value: Any, zone: ZoneInfo, upto: int) -> int | None:
    """The latest fire at or before ``upto`` (ms), or None."""
    return next((t for t in reversed(_occurrences(ev, value, zone, upto)) if t <= upto), None)


# -- the campaigns in force --------------------------------------------------------------------


def timer_token(campaign: str, event: str) -> str:
    return f"{campaign}:{event}"


@dataclass(frozen=True)
class Slot:
    """What one event wants of one contact's timer: ``due`` (the next fire, or None: no timer)
    and ``keep`` (an occurrence already due: a timer still waiting with exactly that score has
    not fired yet and stays, so a write that changes nothing cannot cancel a fire in flight)."""

    member: str
    due: int | None
    keep: int | None


@dataclass(frozen=True)
class Fired:
    """A fired campaign timer, judged against the contact as it is now."""

    campaign: str
    event: CampaignEvent | None
    #: ``start`` (start the flow), ``late`` (the occurrence is more than LATE_MS past),
    #: ``stale`` (no occurrence is due: the campaign, event or field changed since).
    verdict: str
    #: The next fire of this event (member, due), if any.
    next: tuple[str, int] | None


class CampaignBook:
    """The campaigns in force (files and API), by name: what a turn and a contact write consult."""

    def __init__(self, campaigns: dict[str, Campaign] | None = None) -> None:
        self.campaigns = dict(campaigns or {})
        self.fields = frozenset(e.field for c in self.campaigns.values() for e in c.events)

    def get(self, name: str) -> Campaign | None:
        return self.campaigns.get(name)

    def slots(
        self, number: str, fields: dict[str, Any], zone: ZoneInfo, now: int, only: str | None = None
    ) -> list[Slot]:
        """Every event's wish for this contact's timers (``only``: one campaign's events)."""
        out = []
        for c in self.campaigns.values():
            if only is not None and c.name != only:
                continue
            for ev in c.events:
                value = fields.get(ev.field)
                member = keys.timer_member(number, TIMER_KIND, timer_token(c.name, ev.id))
                out.append(Slot(member, next_fire(ev, value, zone, now), last_fire(ev, value, zone, now)))
        return out

    def changed(
        self, number: str, old: dict[str, Any], new: dict[str, Any], zone: ZoneInfo, now: int
    ) -> tuple[list[str], list[tuple[str, int]]]:
        """A turn that set contact fields: the timers to remove and to add (members, due), for
        the events whose field changed. A field cleared leaves nothing scheduled."""
        remove: list[str] = []
        add: list[tuple[str, int]] = []
        if not self.fields:
            return remove, add
        for c in self.campaigns.values():
            for ev in c.events:
                if old.get(ev.field) == new.get(ev.field):
                    continue
                member = keys.timer_member(number, TIMER_KIND, timer_token(c.name, ev.id))
                due = next_fire(ev, new.get(ev.field), zone, now)
                if due is None:
                    remove.append(member)
                else:
                    add.append((member, due))
        return remove, add

    def fired(self, number: str, token: str, fields: dict[str, Any], zone: ZoneInfo, now: int) -> Fired:
        """Judge a fired ``k`` timer: start now, skip as late, or stale; and the next fire."""
        name, _, eid = token.partition(":")
        camp = self.campaigns.get(name)
        ev = next((e for e in camp.events if e.id == eid), None) if camp else None
        if ev is None:
            return Fired(name, None, "stale", None)
        value = fields.get(ev.field)
        due = last_fire(ev, value, zone, now)
        nxt = next_fire(ev, value, zone, now)
        follow = (keys.timer_member(number, TIMER_KIND, token), nxt) if nxt is not None else None
        if due is None:
            return Fired(name, ev, "stale", follow)
        return Fired(name, ev, "late" if now - due > LATE_MS else "start", follow)
