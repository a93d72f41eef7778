"""``parley contacts import FILE``, ``parley contacts forget NUMBER`` and ``parley contacts
reindex``, against the configured Redis.

They talk to Redis alone (a Store, no flows, gateways, worker or HTTP), so they run beside a
running service; an import reads the campaigns (the files beside the flows and the API's) to
set the imported contacts' campaign timers, as the API's import does. Exit codes: 0 every row
imported (or the contact erased), 1 some rows failed (or nothing held for the number), 2 a usage
or configuration problem (raised as ConfigError).

The progress bar is drawn with ``rich`` when it is installed and stderr is a terminal; rich is
a development dependency only, so without it (or piped) the import prints just its summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from engine.app.migrate import check_layout
from engine.core.clock import Clock
from engine.core.config import Config
from engine.core.errors import ConfigError, Unprocessable
from engine.core.numbers import InvalidNumber, to_e164
from engine.core.store import Store
from engine.crm import campaigns, erasure, index
from engine.crm.contacts_import import FORMATS, ImportReport, RowError, format_of, import_contacts
from engine.governance.quiet import QuietHours

CHUNK_BYTES = 1 << 20
OnBatch = Callable[[ImportReport], None]
#: Errors printed to stderr (all of them go to --errors).
SHOWN_ERRORS = 20


@dataclass(frozen=True)
class _Parts:
    """What setting the imported contacts' campaign timers uses (engine/crm/campaigns.py)."""

    config: Config
    clock: Clock
    store: Store
    quiet: QuietHours


def _quiet(cfg: Config) -> QuietHours:
    gov = cfg.governance
    return QuietHours.from_config(
        gov.send_window, gov.send_windows, gov.holidays, gov.default_timezone, gov.quiet_jitter
    )


def _store(cfg: Config) -> Store:
    if not cfg.redis.url:
        raise ConfigError("redis.url", "parley contacts needs the service's Redis (set redis.url)")
    return Store.connect(cfg.redis.url, cfg.redis)


async def _chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := fh.read(CHUNK_BYTES):
        yield chunk


def _progress(total: int) -> tuple[contextlib.AbstractContextManager[Any], OnBatch | None]:
    """A rich progress bar over the file's bytes, or nothing (no rich, or stderr not a terminal)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    try:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return contextlib.nullcontext(), None
    bar = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows, {task.fields[failed]} failed"),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task("import", total=total, rows=0, failed=0)

    def update(report: ImportReport) -> None:
        bar.update(task, completed=report.bytes_read, rows=report.rows, failed=report.failed)

    return bar, update


def run_import(
    cfg: Config, path: str, fmt: str | None, errors_path: str | None, run: Callable[[Any], int]
) -> int:
    """Import ``path``; print a summary line (and the first errors) to stderr. The files are
    opened here, outside the event loop; ``run`` runs the import (the CLI's loop runner)."""
    fmt = fmt or format_of(path)
    if fmt not in FORMATS:
        raise ConfigError("--format", f"cannot tell the format of {path!r}: say --format jsonl or csv")
    file = Path(path)
    if not file.is_file():
        raise ConfigError("FILE", f"no file {path!r}")
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(file.open("rb"))
        errors_out = stack.enter_context(open(errors_path, "wb")) if errors_path else None
        bar, update = _progress(os.path.getsize(file))
        stack.enter_context(bar)
        shown: list[RowError] = []

        def on_error(err: RowError) -> None:
            if len(shown) < SHOWN_ERRORS:
                shown.append(err)
            if errors_out is not None:
                errors_out.write(orjson.dumps(err.as_json(), option=orjson.OPT_APPEND_NEWLINE))

        try:
            return run(_import(cfg, fh, fmt, on_error, update, lambda r: _summary(r, shown, errors_path)))
        except Unprocessable as exc:  # a bad CSV header: nothing was written
            raise ConfigError(path, str(exc)) from None


def _summary(report: ImportReport, shown: list[RowError], errors_path: str | None) -> int:
    for err in shown:
        print(err, file=sys.stderr)
    if report.failed > len(shown):
        more = f"; all in {errors_path}" if errors_path else "; --errors FILE writes them all"
        print(f"... and {report.failed - len(shown)} more{more}", file=sys.stderr)
    print(
        f"imported {report.rows - report.failed} of {report.rows} rows "
        f"({report.created} created, {report.updated} updated), {report.failed} failed",
        file=sys.stderr,
    )
    return 1 if report.failed else 0


async def _import(
    cfg: Config,
    fh: IO[bytes],
    fmt: str,
    on_error: Callable[[RowError], None],
    on_batch: OnBatch | None,
    summary: Callable[[ImportReport], int],
) -> int:
    store = _store(cfg)
    try:
        await store.ping()
        await check_layout(store)  # an earlier release's data: refused, naming parley migrate
        parts = _Parts(cfg, Clock(), store, _quiet(cfg))
        book = await campaigns.book_for(parts, Path(cfg.engine.flows_dir) / "campaigns")
        report = await import_contacts(
            store,
            _chunks(fh),  # a local file read in the loop: nothing else runs on it
            fmt,
            default_region=cfg.numbers.default_region,
            shards=cfg.engine.shards,
            now_ms=Clock().now_ms,
            on_error=on_error,
            on_batch=on_batch,
            written=lambda batch: campaigns.schedule(parts, book, batch),  # their campaign timers
        )
    finally:
        await store.close()
    return summary(report)


async def run_forget(cfg: Config, number: str) -> int:
    """Erase one contact (engine/crm/erasure.py)."""
    try:
        e164 = to_e164(number, cfg.numbers.default_region)
    except InvalidNumber as exc:
        raise ConfigError("NUMBER", f"{number!r} is not a phone number: {exc}") from None
    store = _store(cfg)
    try:
        await store.ping()
        await check_layout(store)  # an earlier release's data: refused, naming parley migrate
        erased = await erasure.forget(
            store,
            e164,
            shards=cfg.engine.shards,
            key=cfg.governance.erasure_key,
            now_ms=Clock().now_ms(),
            source="cli",
        )
    finally:
        await store.close()
    if not erased:
        print(f"nothing held for {e164} (unknown, or already erased)", file=sys.stderr)
        return 1
    print(f"erased {e164}; its consent history is kept under a hashed key", file=sys.stderr)
    return 0


async def run_reindex(cfg: Config) -> int:
    """Put every contact in its shard's listing index (engine/crm/index.py): the backfill for
    contacts written before the index existed."""
    store = _store(cfg)
    try:
        await store.ping()
        await check_layout(store)
        done = await index.backfill(store, cfg.engine.shards)
    finally:
        await store.close()
    print(f"indexed {done} contacts", file=sys.stderr)
    return 0
