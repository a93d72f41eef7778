"""Compact per-message bookkeeping: id maps in time-bucketed, listpack-encoded Redis hashes.

Every reply leaves a provider id (so its receipt finds the message), every inbound text a
dedupe mark (so a provider's retry is not taken twice). One string key each cost 136 and 152
bytes by MEMORY USAGE (key, object, dict entry and expiry for a few dozen bytes of data); at 150
messages/s kept for days that is gigabytes. Here entries live as fields of small hashes instead:

    key = prefix + (slot, bucket)     slot = crc32(id) % slots      bucket = now // bucket_s

A hash holds the ids of one slot written during one bucket, expires whole ``window`` after its
bucket ends, and stays small enough for Redis's compact listpack encoding (at most
``hash-max-listpack-entries`` fields, 128 by default, each at most ``hash-max-listpack-value``
bytes, 64 by default): there an entry costs its field and value plus about 4 bytes. The number
of slots is sized from the rate the map must take (a connector's ``rate``) so that a full bucket
holds about :data:`TARGET_ENTRIES` fields per hash, half the default limit: room for the spread
of the hash and for bursts. Above the planned rate a hash grows past the limit and Redis turns it
into a hashtable: memory grows (a few times), nothing is lost or mismatched.

A lookup reads the id's slot in each bucket from now back over the window (newest first: most
receipts come within minutes). All of an id's buckets share the hash tag ``{name:slot}``, so the
script reading them stays in one Redis Cluster slot.

Fields longer than :data:`MAX_FIELD` are replaced by a digest (so no field breaks the listpack
value limit, and long ids cost 20 bytes); values stay short by construction ("N message-id",
"digest entry-id"). ``field(field(x)) == field(x)``: a digest is a field as it stands.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass

#: Fields per hash a full bucket should hold at the planned rate (Redis's default limit is 128).
TARGET_ENTRIES = 64
#: Buckets a window is cut into: a lookup reads at most BUCKETS + 1 hashes; an entry outlives
#: its window by at most one bucket (1/8 more memory than exact expiry, on average 1/16).
BUCKETS = 8
#: Longest field kept as it is; a longer one is stored as a 20-character digest (80 bits: two
#: ids meet only within one hash of a few dozen fields, so a collision is out of reach). Short
#: SMSC ids stay readable; a Twilio SID (34) or a dedupe field with one is digested.
MAX_FIELD = 32
#: Rate assumed when none is configured (``rate: 0``, no limit), messages per second.
DEFAULT_RATE = 100.0
MAX_SLOTS = 1 << 20


@dataclass(frozen=True)
class Buckets:
    """How one id map is cut: ``slots`` hashes per bucket of ``bucket_s`` seconds, entries kept
    ``window_s`` after they were written (and at most one bucket longer)."""

    window_s: int
    bucket_s: int
    slots: int

    def bucket(self, now_ms: int) -> int:
        return now_ms // 1000 // self.bucket_s

    def slot(self, field: str) -> int:
        return zlib.crc32(field.encode()) % self.slots

    def lookback(self, now_ms: int) -> list[int]:
        """The buckets an entry written within the window may be in, newest first."""
        now = self.bucket(now_ms)
        oldest = self.bucket(now_ms - self.window_s * 1000)
        return list(range(now, oldest - 1, -1))

    def ttl_s(self, now_ms: int) -> int:
        """Seconds the current bucket's hash must live: until ``window`` after the bucket ends
        (its last entry's window), so every entry is kept at least ``window``."""
        ends_s = (self.bucket(now_ms) + 1) * self.bucket_s
        return max(1, ends_s + self.window_s - now_ms // 1000)


def plan(window_s: float, rate: float) -> Buckets:
    """The buckets and slots of a map keeping ids for ``window_s`` written at up to ``rate``
    per second (0: :data:`DEFAULT_RATE`)."""
    window = max(1, math.ceil(window_s))
    bucket_s = max(1, math.ceil(window / BUCKETS))
    per_bucket = (rate or DEFAULT_RATE) * bucket_s
    slots = 1 << max(0, math.ceil(math.log2(max(1.0, per_bucket / TARGET_ENTRIES))))
    return Buckets(window, bucket_s, min(slots, MAX_SLOTS))


def field(ident: str) -> str:
    """``ident`` as a hash field: itself, or a digest when longer than :data:`MAX_FIELD`."""
    if len(ident.encode()) <= MAX_FIELD:
        return ident
    return hashlib.blake2b(ident.encode(), digest_size=10).hexdigest()
