"""Contacts: the CRM's view of a customer, keyed by E.164 number.

Stored as one small hash per contact (``p:c:TN``, T: its shard's hash tag): ``f`` fields
(orjson), ``tg`` tags (orjson list), ``l`` language, ``tz`` timezone, ``ca``/``ua``
created/updated (ms). A flow that sets fields or tags writes them in its turn's commit, guarded
by ``ua`` so a concurrent PUT is never lost.
``PUT`` replaces fields, tags, language and timezone as a whole: the CRM is the source of
truth, so what it sends is what we hold.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import NoScriptError

from engine.core import keys
from engine.core.errors import Unprocessable
from engine.core.scripts.contact import ContactArgs, ContactWritten
from engine.core.store import Store

FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$")
#: Names templates use for the contact itself; a CRM field may not shadow them.
RESERVED_FIELDS = frozenset({"number", "language", "timezone", "fields", "tags"})
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TAGS = 100
MAX_FIELDS = 200
MAX_VALUE_CHARS = 2000


@dataclass
class Contact:
    number: str
    fields: dict[str, Any] = field(default_factory=dict)
    language: str | None = None
    timezone: str | None = None
    created_at: int = 0
    updated_at: int = 0
    tags: list[str] = field(default_factory=list)

    def template_view(self) -> dict[str, Any]:
        """``contact.*`` in templates: each field by name, plus number, language, timezone.

        An empty value from the CRM (null, "", []) counts as missing, so ``| default(...)`` and
        ``is defined`` treat it as such: no "thanks for choosing ." or "Hi None"."""
        view: dict[str, Any] = {k: v for k, v in self.fields.items() if v not in (None, "", [])}
        view["fields"] = self.fields
        view["tags"] = list(self.tags)
        view["number"] = self.number
        if self.language:
            view["language"] = self.language
        if self.timezone:
            view["timezone"] = self.timezone
        return view

    @classmethod
    def from_hash(cls, number: str, h: Mapping[Any, Any]) -> Contact | None:
        if not h:
            return None
        return cls(
            number=number,
            fields=orjson.loads(h.get(b"f", b"{}")),
            language=h[b"l"].decode() if h.get(b"l") else None,
            timezone=h[b"tz"].decode() if h.get(b"tz") else None,
            created_at=int(h.get(b"ca", 0)),
            updated_at=int(h.get(b"ua", 0)),
            tags=orjson.loads(h[b"tg"]) if h.get(b"tg") else [],
        )


def validate_fields(value: object) -> dict[str, Any]:
    """Check CRM fields: names usable in templates, scalar or list values, sane sizes."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unprocessable("fields", "must be an object of field name -> value")
    if len(value) > MAX_FIELDS:
        raise Unprocessable("fields", f"at most {MAX_FIELDS} fields")
    for name, v in value.items():
        if not FIELD_NAME_RE.match(name):
            raise Unprocessable(
                f"fields.{name}",
                "names are letters, digits and _ (max 64), not starting with a digit",
            )
        if name in RESERVED_FIELDS:
            raise Unprocessable(f"fields.{name}", f"{name!r} is reserved (use the top-level key)")
        if isinstance(v, dict):
            raise Unprocessable(f"fields.{name}", "nested objects are not supported; flatten them")
        items = v if isinstance(v, list) else [v]
        for item in items:
            if item is not None and not isinstance(item, str | int | float | bool):
                raise Unprocessable(
                    f"fields.{name}", "values are text, numbers, true/false, null or lists of those"
                )
            if isinstance(item, str) and len(item) > MAX_VALUE_CHARS:
                raise Unprocessable(f"fields.{name}", f"longer than {MAX_VALUE_CHARS} characters")
    return dict(value)


def validate_tags(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise Unprocessable("tags", f"must be a list of at most {MAX_TAGS} tags")
    for i, t in enumerate(value):
        if not isinstance(t, str) or not TAG_RE.match(t):
            raise Unprocessable(f"tags[{i}]", "tags are letters, digits, _ and - (max 64)")
    return list(dict.fromkeys(value))


def validate_language(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not LANGUAGE_RE.match(value):
        raise Unprocessable("language", "must be a language code like en, es or pt-BR")
    return value


def validate_timezone(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unprocessable("timezone", "must be an IANA time zone name like Europe/London")
    if value not in time_zones():
        raise Unprocessable("timezone", f"unknown time zone {value!r} (use an IANA name like Europe/London)")
    return value


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA names a contact's timezone may take: the time zone database's own list (not
    every file ZoneInfo would open, e.g. ``posixrules``), which the OpenAPI description lists too."""
    return frozenset(zoneinfo.available_timezones())


async def upsert(store: Store, shards: int, contact: Contact, now_ms: int) -> tuple[Contact, bool]:
    """Write ``contact`` (``shards``: engine.shards, which places its key); returns the stored
    contact and whether it was created."""
    return contact, (await upsert_many(store, shards, [contact], now_ms))[0]


async def upsert_many(store: Store, shards: int, batch: list[Contact], now_ms: int) -> list[bool]:
    """Write every contact of ``batch`` in one round trip; which of them were created.

    Each contact is one script call (contact.lua), so each is written whole or not at all; the
    calls run in order, so a number twice in a batch ends as its last one (created, then
    updated). Sets ``created_at``/``updated_at`` on the contacts."""
    if not batch:
        return []
    for attempt in (1, 2):
        async with store.redis.pipeline(transaction=False) as pipe:
            for c in batch:
                fields, tags = orjson.dumps(c.fields), orjson.dumps(c.tags)
                call = ContactArgs(
                    c.number, keys.shard_of(c.number, shards), now_ms, fields, tags,
                    c.language or "", c.timezone or "",
                )  # fmt: skip
                await store.run("contact", call.to_keys(), call.to_argv(), client=pipe)
            try:
                res = await pipe.execute()
            except NoScriptError:
                # Redis lost its script cache (a restart): nothing ran; load and go again once.
                if attempt == 2:
                    raise
                await store.load_scripts()
                continue
        break
    written = [ContactWritten.parse(r) for r in res]
    for c, w in zip(batch, written, strict=True):
        c.created_at, c.updated_at = w.created_at, now_ms
    return [w.created for w in written]


async def get(store: Store, shards: int, number: str) -> Contact | None:
    key = keys.contact(number, keys.shard_of(number, shards))
    return Contact.from_hash(number, await store.redis.hgetall(key))


async def missing(store: Store, shards: int, numbers: list[str]) -> list[str]:
    """Which of ``numbers`` have no contact record (one round trip)."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.exists(keys.contact(n, keys.shard_of(n, shards)))
        found = await pipe.execute()
    return [n for n, ok in zip(numbers, found, strict=True) if not ok]
