"""The 63-bit hashes that keep random keys out of the store's big B-trees.

``jobs.jk`` is :func:`job_key` of (lib, app, job_id) and ``job_events.eid`` is :func:`event_key` of
the event's id. The web layer looks a job up with ``WHERE jk = :jk AND lib = … AND app = … AND
job_id = …``, so it must hash exactly like this module.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["job_key", "event_key"]


def job_key(lib: str, app: str, job_id: str) -> int:
    """Return the non-negative 63-bit hash of a job's natural key (the ``jobs.jk`` column)."""
    data = f"{lib}\x1f{app}\x1f{job_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") >> 1


def event_key(event_id: str) -> int:
    """Return the non-negative 63-bit hash of an event id (the ``job_events.eid`` column)."""
    data = event_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") >> 1
