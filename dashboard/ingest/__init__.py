"""Ingest: reads the event stream with a consumer group and projects it into the store.

``run_ingest(settings)`` is the whole public surface; ``flowerbed ingest`` and ``flowerbed serve``
run it, and ``python -m dashboard.ingest`` does too.
"""

from __future__ import annotations

from .consumer import run_ingest

__all__ = ["run_ingest"]
