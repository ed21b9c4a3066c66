"""Live updates: one Redis subscription per web process, fanned out to browsers over SSE."""

from __future__ import annotations

from .hub import Hub, hub_for

__all__ = ["Hub", "hub_for"]
