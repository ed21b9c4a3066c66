"""Inline SVG chart geometry, computed on the server (no chart library; CSS classes colour it per theme)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["throughput_chart", "rate_chart", "nice_max"]

WIDTH = 600.0
HEIGHT = 110.0


def nice_max(value: float) -> float:
    """The smallest 1-2-5 step at or above ``value`` (axis tops read as round numbers)."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 < value:
        step *= 10
    for m in (1, 2, 5, 10):
        if step * m >= value:
            return step * m
    return step * 10


def throughput_chart(bins: Sequence[dict[str, Any]], bin_s: int) -> dict[str, Any]:
    """Stacked bars per bin: succeeded below, failures (failed, retried, lost) above, cancelled on top."""
    n = max(1, len(bins))
    top = nice_max(max((b["total"] for b in bins), default=0))
    slot = WIDTH / n
    gap = 1.0 if slot > 4 else 0.0
    bars = []
    for i, b in enumerate(bins):
        x = i * slot
        y = HEIGHT
        parts = []
        for cls, value in (("ok", b["succeeded"]), ("bad", b["failed"] + b["lost"]), ("warn", b["retried"]),
                           ("muted", b["cancelled"])):
            if value:
                h = HEIGHT * value / top
                y -= h
                parts.append({"cls": cls, "y": round(y, 2), "h": round(h, 2)})
        bars.append({"x": round(x + gap / 2, 2), "w": round(max(0.5, slot - gap), 2), "parts": parts, "bin": b})
    return {"width": WIDTH, "height": HEIGHT, "top": top, "bars": bars, "bin_s": bin_s,
            "ticks": [{"y": round(HEIGHT * (1 - f), 2), "label": top * f} for f in (0.5, 1.0)]}


def rate_chart(bins: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Failure rate per bin as a line (gaps where nothing ran) over a shaded area."""
    n = max(1, len(bins))
    rates = [b["failure_rate"] for b in bins]
    peak = max((r for r in rates if r is not None), default=0.0)
    top = min(1.0, nice_max(peak * 100) / 100) if peak > 0 else 0.1
    slot = WIDTH / n
    segments: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for i, r in enumerate(rates):
        if r is None:
            if current:
                segments.append(current)
                current = []
            continue
        current.append((round(i * slot + slot / 2, 2), round(HEIGHT - HEIGHT * min(r, top) / top, 2)))
    if current:
        segments.append(current)
    lines = [" ".join(f"{x},{y}" for x, y in seg) for seg in segments]
    areas = [f"{seg[0][0]},{HEIGHT} " + " ".join(f"{x},{y}" for x, y in seg) + f" {seg[-1][0]},{HEIGHT}"
             for seg in segments if len(seg) > 1]
    dots = [{"x": seg[0][0], "y": seg[0][1]} for seg in segments if len(seg) == 1]
    hits = [{"x": round(i * slot, 2), "w": round(slot, 2), "bin": b} for i, b in enumerate(bins)]
    return {"width": WIDTH, "height": HEIGHT, "top": top, "lines": lines, "areas": areas, "dots": dots, "hits": hits,
            "ticks": [{"y": round(HEIGHT * (1 - f), 2), "label": top * f} for f in (0.5, 1.0)]}
