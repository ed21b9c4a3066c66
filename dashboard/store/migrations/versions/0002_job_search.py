"""full-text search over jobs: FTS5 on SQLite, a tsvector GIN index on PostgreSQL

SQLite: ``jobs_fts``, an external-content FTS5 table over jobs (job_id, task, args, exc_type, exc_message)
keyed by ``jobs.id``. Only ingest writes it: a job is indexed when first inserted and again only when
one of those columns changes (see ``dashboard.ingest.search_index``). PostgreSQL: an expression GIN
index over the same text, kept by PostgreSQL itself. ``dashboard.store.queries`` reads both.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 01:15:00
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

#: The text PostgreSQL indexes: every run of letters and digits is a word, as SQLite's unicode61
#: tokenizer splits it (PostgreSQL's own parser keeps "tasks.send_email" or "-42" whole).
#: ``dashboard.store.queries`` must use the very same expression.
PG_DOCUMENT = ("to_tsvector('simple'::regconfig, regexp_replace(job_id || ' ' || coalesce(task, '') || ' ' || coalesce(args, '') || ' ' "
               "|| coalesce(exc_type, '') || ' ' || coalesce(exc_message, ''), '[^[:alnum:]]+', ' ', 'g'))")


def upgrade() -> None:
    if op.get_context().dialect.name == 'postgresql':
        op.execute(f"CREATE INDEX IF NOT EXISTS jobs_search ON jobs USING gin ({PG_DOCUMENT})")
        return
    op.execute("CREATE VIRTUAL TABLE IF NOT EXISTS jobs_fts USING fts5("
               "job_id, task, args, exc_type, exc_message, content='jobs', content_rowid='id', "
               "tokenize='unicode61 remove_diacritics 2')")
    op.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")  # jobs stored before this revision


def downgrade() -> None:
    if op.get_context().dialect.name == 'postgresql':
        op.execute("DROP INDEX IF EXISTS jobs_search")
    else:
        op.execute("DROP TABLE IF EXISTS jobs_fts")
