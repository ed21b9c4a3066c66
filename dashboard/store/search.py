"""The jobs search language: ``task:send_email state:failed exc:Timeout some free text``.

Qualifiers narrow one column; the rest is free text matched against arguments and errors.
Shared by the JSON API (``q=``) and the jobs page's search box.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

#: Qualifier → the filter it sets.
QUALIFIERS: dict[str, str] = {
    "task": "task",
    "state": "state",
    "queue": "queue",
    "worker": "worker",
    "exc": "exc",
    "args": "args",
    "lib": "lib",
    "app": "app",
    "id": "job_id",
    "correlation": "correlation_id",
}


@dataclass
class ParsedQuery:
    """Column filters from qualifiers, plus the free-text words."""

    filters: dict[str, str] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


def parse_query(q: str | None) -> ParsedQuery:
    """Split a search string into qualifier filters and free text (quotes group words)."""
    parsed = ParsedQuery()
    if not q:
        return parsed
    try:
        tokens = shlex.split(q)
    except ValueError:  # an unbalanced quote: treat the whole thing as words
        tokens = q.split()
    for token in tokens:
        key, sep, value = token.partition(":")
        target = QUALIFIERS.get(key.lower()) if sep else None
        if target and value:
            parsed.filters[target] = value
        elif token:
            parsed.text.append(token)
    return parsed
