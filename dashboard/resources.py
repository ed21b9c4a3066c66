"""Where the templates and static files are: inside the wheel, or at the checkout's top level."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_HERE / f"_{name}", _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"flowerbed: the {name}/ folder is missing from this installation")


def templates_dir() -> Path:
    """The folder holding base.html, pages/, partials/ and macros/."""
    return _find("templates")


def static_dir() -> Path:
    """The folder holding app.css and vendor/ (htmx)."""
    return _find("static")
