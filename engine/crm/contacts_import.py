"""Bulk import of contacts from JSONL or CSV, streamed: a file of any size in bounded memory.

JSONL: one object per line, ``{"number", "fields": {...}, "tags": [...], "language",
"timezone"}`` (only ``number`` is required). CSV: a header row naming ``number`` and optionally
``language``, ``timezone`` and ``tags`` (separated by ``;`` or ``|``); every other column is a
field, its values text; an empty cell is an absent field.

Every row is checked as ``PUT /v1/contacts/{number}`` checks a body, and written the same way
(a whole replacement of fields, tags, language and timezone). A bad row never stops the
import and is never half-written: it is counted and reported with its row number, the field at
fault and why. Good rows are written in batches of ``batch_size``, one round trip each, each row
whole (contacts.upsert_many).

Row numbers, as reported: in JSONL the line number in the file (blank lines are skipped, but
counted, so ``row 9`` is what an editor shows as line 9); in CSV the record number under the
header (the header is not counted: row 1 is the first record, which a spreadsheet shows on
line 2; a quoted value spanning lines is one record).

A number in the file twice: the last row wins (the rows are written in file order; the first
counts as created, the later ones as updated).
"""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core import contacts
from engine.core.errors import Unprocessable
from engine.core.numbers import InvalidNumber, to_e164
from engine.core.store import Store

FORMATS = ("jsonl", "csv")
BATCH_SIZE = 500
#: Errors kept in the report (the rest are counted, and handed to ``on_error``).
MAX_REPORTED_ERRORS = 1000
#: A longer line (or CSV record) is one failed row, skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
JSONL_KEYS = frozenset({"number", "fields", "tags", "language", "timezone"})
CSV_SPECIAL = ("number", "language", "timezone", "tags")
TAG_SPLIT = re.compile(r"[;|]")


@dataclass(frozen=True)
class RowError:
    """One refused row: its number (see the module docstring), the field at fault or None for
    the row as a whole, and why."""

    row: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"row {self.row}: {where}{self.message}"

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)
    #: Bytes of input read so far (for a progress bar).
    bytes_read: int = 0

    @property
    def errors_truncated(self) -> bool:
        return self.failed > len(self.errors)

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "errors": [e.as_json() for e in self.errors],
            "errors_truncated": self.errors_truncated,
        }


class _TooLong:
    """Stands for a line over MAX_LINE_BYTES (dropped, not held)."""


TOO_LONG = _TooLong()


async def lines(chunks: AsyncIterable[bytes], report: ImportReport) -> AsyncIterator[bytes | _TooLong]:
    """Split a byte stream into lines (with their ``\\n``), never holding more than one line."""
    buf = b""
    skipping = False
    async for chunk in chunks:
        report.bytes_read += len(chunk)
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if not skipping:
                yield buf[start : end + 1]
            skipping = False
            start = end + 1
        buf = buf[start:]
        if len(buf) > MAX_LINE_BYTES:
            if not skipping:
                yield TOO_LONG
            skipping, buf = True, b""
    if buf and not skipping:
        yield buf


def _contact(raw: dict[str, Any], region: str) -> contacts.Contact:
    """A row as a contact, checked like a PUT body; Unprocessable names the field at fault."""
    number = raw.get("number")
    if number is None or number == "":
        raise Unprocessable("number", "required")
    if not isinstance(number, str):
        raise Unprocessable("number", "must be a string like +447700900123")
    try:
        e164 = to_e164(number, region)
    except InvalidNumber as exc:
        raise Unprocessable("number", f"{number!r} is not a phone number: {exc}") from None
    return contacts.Contact(
        number=e164,
        fields=contacts.validate_fields(raw.get("fields")),
        tags=contacts.validate_tags(raw.get("tags")),
        language=contacts.validate_language(raw.get("language")),
        timezone=contacts.validate_timezone(raw.get("timezone")),
    )


async def _jsonl_rows(source: AsyncIterator[bytes | _TooLong]) -> AsyncIterator[tuple[int, Any]]:
    """(row number, dict or RowError) per non-blank line."""
    lineno = 0
    async for line in source:
        lineno += 1
        if isinstance(line, _TooLong):
            yield lineno, RowError(lineno, None, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        line = line.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield lineno, RowError(lineno, None, f"invalid JSON: {exc.msg} at character {exc.pos + 1}")
            continue
        if not isinstance(obj, dict):
            yield lineno, RowError(lineno, None, "must be a JSON object")
            continue
        unknown = sorted(set(obj) - JSONL_KEYS)
        if unknown:
            allowed = ", ".join(sorted(JSONL_KEYS))
            problem = f"unknown key (allowed: {allowed}; fields go in 'fields')"
            yield lineno, RowError(lineno, unknown[0], problem)
            continue
        yield lineno, obj


def _quote_open(text: str, inside: bool) -> bool:
    """Whether a quoted CSV value is still open at the end of ``text`` (as the csv module reads
    it: a quote is special only at the start of a value, and ``""`` inside one is a quote)."""
    i, n = 0, len(text)
    while i < n:
        if inside:
            j = text.find('"', i)
            if j < 0:
                return True
            if text.startswith('"', j + 1):
                i = j + 2
                continue
            inside, i = False, j + 1
            j = text.find(",", i)  # anything up to the next comma belongs to this value
            if j < 0:
                return False
            i = j + 1
        elif text[i] == '"':
            inside, i = True, i + 1
        else:
            j = text.find(",", i)
            if j < 0:
                return False
            i = j + 1
    return inside


async def _csv_records(source: AsyncIterator[bytes | _TooLong]) -> AsyncIterator[list[str] | RowError]:
    """Each CSV record (the header first) as its cells, or a RowError (numbered by the caller)."""
    pending: list[str] = []
    size, inside, first = 0, False, True
    async for line in source:
        if isinstance(line, _TooLong) or size > MAX_LINE_BYTES:
            # Drop the record: finish it as if its value were closed on this line.
            yield RowError(0, None, f"record longer than {MAX_LINE_BYTES} bytes")
            pending, size, inside = [], 0, False
            continue
        try:
            text = line.decode("utf-8-sig" if first else "utf-8")
        except UnicodeDecodeError as exc:
            yield RowError(0, None, f"not valid UTF-8: {exc.reason} at byte {exc.start}")
            pending, size, inside = [], 0, False
            continue
        first = False
        if not pending and not text.strip():
            continue
        pending.append(text)
        size += len(line)
        inside = _quote_open(text, inside) if inside or '"' in text else False
        if inside:
            continue
        yield next(csv.reader(pending))
        pending, size = [], 0
    if pending:
        yield next(csv.reader(pending))


def _csv_header(cells: list[str]) -> tuple[list[str], int]:
    """The column names and the index of ``number``; Unprocessable names a bad header."""
    names = [c.strip() for c in cells]
    if "number" not in names:
        raise Unprocessable("header", f"needs a 'number' column (got: {', '.join(names)})")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise Unprocessable("header", f"column {name!r} appears twice")
        seen.add(name)
    try:
        contacts.validate_fields({n: "" for n in names if n not in CSV_SPECIAL})
    except Unprocessable as exc:
        raise Unprocessable("header", f"column {exc.field.removeprefix('fields.')!r}: {exc}") from None
    return names, names.index("number")


async def _csv_rows(source: AsyncIterator[bytes | _TooLong]) -> AsyncIterator[tuple[int, Any]]:
    header: list[str] | None = None
    row = 0
    async for rec in _csv_records(source):
        if header is None:
            if isinstance(rec, RowError):
                raise Unprocessable("header", rec.message)
            header, _ = _csv_header(rec)
            continue
        row += 1
        if isinstance(rec, RowError):
            yield row, RowError(row, None, rec.message)
            continue
        if len(rec) != len(header):
            yield row, RowError(row, None, f"has {len(rec)} values, the header has {len(header)} columns")
            continue
        cells = dict(zip(header, rec, strict=True))
        tags = [t.strip() for t in TAG_SPLIT.split(cells.pop("tags", "")) if t.strip()]
        yield (
            row,
            {
                "number": cells.pop("number").strip(),
                "language": cells.pop("language", "").strip() or None,
                "timezone": cells.pop("timezone", "").strip() or None,
                "tags": tags,
                "fields": {k: v for k, v in cells.items() if v != ""},
            },
        )


async def import_contacts(
    store: Store,
    chunks: AsyncIterable[bytes],
    fmt: str,
    *,
    default_region: str,
    shards: int,
    now_ms: Callable[[], int],
    batch_size: int = BATCH_SIZE,
    on_error: Callable[[RowError], None] | None = None,
    on_batch: Callable[[ImportReport], None] | None = None,
    written: Callable[[list[contacts.Contact]], Awaitable[Any]] | None = None,
) -> ImportReport:
    """Read ``chunks`` (the file's bytes, in pieces of any size) as ``fmt`` and upsert every
    valid row; returns the counts and the first MAX_REPORTED_ERRORS errors. ``on_error`` sees
    every error, ``on_batch`` the report after each batch, ``written`` each batch once stored
    (the API sets the contacts' campaign timers with it). A bad CSV header raises
    Unprocessable (field ``header``) before anything is written."""
    if fmt not in FORMATS:
        raise Unprocessable("format", f"must be one of {', '.join(FORMATS)}")
    report = ImportReport()
    source = lines(chunks, report)
    rows = _jsonl_rows(source) if fmt == "jsonl" else _csv_rows(source)
    batch: list[contacts.Contact] = []

    def fail(err: RowError) -> None:
        report.failed += 1
        if len(report.errors) < MAX_REPORTED_ERRORS:
            report.errors.append(err)
        if on_error is not None:
            on_error(err)

    async def flush() -> None:
        created = await contacts.upsert_many(store, shards, batch, now_ms())
        report.created += sum(created)
        report.updated += len(created) - sum(created)
        if written is not None and batch:
            await written(batch)
        batch.clear()
        if on_batch is not None:
            on_batch(report)

    async for row, parsed in rows:
        report.rows += 1
        if isinstance(parsed, RowError):
            fail(parsed)
            continue
        try:
            batch.append(_contact(parsed, default_region))
        except Unprocessable as exc:
            fail(RowError(row, exc.field, exc.message.removeprefix(f"{exc.field}: ")))
            continue
        if len(batch) >= batch_size:
            await flush()
    await flush()
    return report


def format_of(path: str) -> str | None:
    """The format a file name implies (``.jsonl``/``.ndjson`` or ``.csv``), or None."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv" if lower.endswith(".csv") else None
