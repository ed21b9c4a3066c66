"""Compact integer keys for the store: a job's natural key and an event's id, hashed to 63 bits.

Random text keys scatter writes across a big B-tree; a 63-bit hash keeps the one random index
small (shared/reference/ingest-write-path.md). Collisions are harmless: readers and ingest always
compare the natural key as well.
"""

from __future__ import annotations

from hashlib import blake2b


def job_key(lib: str, app: str, job_id: str) -> int:
    """63-bit hash of a job's natural key (lib, app, job_id)."""
    data = f"{lib}\x1f{app}\x1f{job_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") >> 1


def event_key(event_id: str) -> int:
    """63-bit hash of an event id, for de-duplicating re-delivered events."""
    data = event_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") >> 1
