"""The jobs' full-text index on SQLite (``jobs_fts``, FTS5 with external content), kept by the writer.

The index holds job_id, task, args, exc_type and exc_message of each job, keyed by ``jobs.id``. An
external-content FTS5 table is told what to remove: a ``'delete'`` row must carry exactly the
values that were indexed. They are always the stored row's values, because a job is indexed when
it is first inserted and re-indexed (old values out, new ones in) only when one of the four
columns changes (the job id never does); most jobs are indexed exactly once. PostgreSQL needs none of this: its expression
index (migration 0002) follows the table by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .projector import COLUMNS

__all__ = ["FIELDS", "INDEXES", "INSERT_SQL", "DELETE_SQL", "terms", "delete_rows_sql"]

#: The indexed ``jobs`` columns, in ``jobs_fts`` column order.
FIELDS: tuple[str, ...] = ("job_id", "task", "args", "exc_type", "exc_message")
#: Their positions in a projector row.
INDEXES: tuple[int, ...] = tuple(COLUMNS.index(name) for name in FIELDS)

INSERT_SQL = f"INSERT INTO jobs_fts (rowid, {', '.join(FIELDS)}) VALUES (?, ?, ?, ?, ?, ?)"
DELETE_SQL = f"INSERT INTO jobs_fts (jobs_fts, rowid, {', '.join(FIELDS)}) VALUES ('delete', ?, ?, ?, ?, ?, ?)"


def terms(row: Sequence[Any]) -> tuple[Any, ...]:
    """The indexed values of a projector row (``None`` where unset)."""
    return (row[INDEXES[0]], row[INDEXES[1]], row[INDEXES[2]], row[INDEXES[3]], row[INDEXES[4]])


def delete_rows_sql(where: str) -> str:
    """Remove from the index the jobs that ``SELECT … FROM jobs WHERE <where>`` selects (before deleting them)."""
    return (f"INSERT INTO jobs_fts (jobs_fts, rowid, {', '.join(FIELDS)}) "
            f"SELECT 'delete', id, {', '.join(FIELDS)} FROM jobs WHERE {where}")
