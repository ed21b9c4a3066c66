"""``flowerbed demo``: real workers of arq, Dramatiq, Taskiq and Celery on a sample workload, plus the dashboard."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Entry point that ``flowerbed demo …`` dispatches to."""
    from .runner import main as run

    return run(argv)
