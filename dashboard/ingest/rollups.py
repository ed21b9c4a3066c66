"""Per-minute and per-hour counters by (lib, app, task, outcome), summed in memory for one batch.

A batch adds each new event once; the sums go to the store as one upsert per key that *adds* to
what is there, so two batches (or two dashboard processes on PostgreSQL) never overwrite each other.
"""

from __future__ import annotations

from bisect import bisect_left

from dashboard.store.tables import BUCKET_COLUMNS, DURATION_BUCKETS_MS, rollup_hour, rollup_minute

__all__ = ["Rollups", "upsert_sql"]

_NB = len(BUCKET_COLUMNS)
_BOUNDS = DURATION_BUCKETS_MS


class Rollups:
    """The rollup deltas of one batch: ``{(period start, lib, app, task, outcome): [n, sum, max, b0…]}``."""

    __slots__ = ("minute",)

    def __init__(self) -> None:
        self.minute: dict[tuple[int, str, str, str, str], list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self.minute)

    def add(self, ts: float, lib: str, app: str, task: str, outcome: str, ms: float | None) -> None:
        """Count one event; ``ms`` (a duration or a wait) also feeds the sum, max and histogram."""
        t = int(ts)
        key = (t - t % 60, lib, app, task, outcome)
        acc = self.minute.get(key)
        if acc is None:
            acc = self.minute[key] = [0, 0.0, 0.0] + [0] * _NB
        acc[0] += 1
        if ms is not None:
            acc[1] += ms
            if ms > acc[2]:
                acc[2] = ms
            acc[3 + bisect_left(_BOUNDS, ms)] += 1

    def _hours(self) -> dict[tuple[int, str, str, str, str], list[float]]:
        """The hour deltas, summed from the minute ones (a batch touches few keys: cheaper than per event)."""
        hour: dict[tuple[int, str, str, str, str], list[float]] = {}
        for (minute, lib, app, task, outcome), acc in self.minute.items():
            key = (minute - minute % 3600, lib, app, task, outcome)
            into = hour.get(key)
            if into is None:
                hour[key] = list(acc)
                continue
            into[0] += acc[0]
            into[1] += acc[1]
            if acc[2] > into[2]:
                into[2] = acc[2]
            for i in range(3, 3 + _NB):
                into[i] += acc[i]
        return hour

    def rows(self, which: str, ordered: bool = False) -> list[tuple[object, ...]]:
        """Rows for :func:`upsert_sql` (column order); ``ordered`` so concurrent writers lock in one order."""
        table = self.minute if which == "minute" else self._hours()
        items = sorted(table.items()) if ordered else table.items()
        return [(*key, *acc) for key, acc in items]


def upsert_sql(which: str, style: str = "qmark") -> str:
    """An INSERT … ON CONFLICT that adds a delta row (works on SQLite ≥ 3.24 and PostgreSQL).

    ``style`` is ``qmark`` (``?``) for sqlite3 or ``named`` (``:c``) for SQLAlchemy ``text()``.
    """
    table = rollup_minute if which == "minute" else rollup_hour
    time_col = "minute" if which == "minute" else "hour"
    cols = [time_col, "lib", "app", "task", "outcome", "n", "sum_ms", "max_ms", *BUCKET_COLUMNS]
    assert set(cols) == {c.name for c in table.columns}
    key = [c.name for c in table.primary_key.columns]
    values = ", ".join("?" if style == "qmark" else f":{c}" for c in cols)
    t = table.name
    sets = [f"n = {t}.n + excluded.n", f"sum_ms = {t}.sum_ms + excluded.sum_ms",
            f"max_ms = CASE WHEN excluded.max_ms > {t}.max_ms THEN excluded.max_ms ELSE {t}.max_ms END"]
    sets += [f"{b} = {t}.{b} + excluded.{b}" for b in BUCKET_COLUMNS]
    return (f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({values}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}")


#: Column names of a rollup delta row, in :meth:`Rollups.rows` order (for named-style executes).
def row_names(which: str) -> tuple[str, ...]:
    """The column name of each position of a :meth:`Rollups.rows` row."""
    return ("minute" if which == "minute" else "hour", "lib", "app", "task", "outcome", "n", "sum_ms",
            "max_ms", *BUCKET_COLUMNS)
