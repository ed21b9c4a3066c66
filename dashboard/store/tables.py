"""The store's tables, as SQLAlchemy Core. Only ingest writes them; the web layer reads.

Times are unix seconds (REAL) everywhere in the store; the API turns them into ISO 8601 UTC.
Jobs get a sequential integer ``id`` at first sight, so the big B-trees grow at their right edge
and list pages can use ``id`` as a stable keyset cursor; the natural key (lib, app, job_id) is
looked up through ``jk``, a 63-bit hash, which keeps the one random index small
(see ``shared/reference/ingest-write-path.md``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Sequence,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: Job ids on PostgreSQL, where several ingest processes insert jobs; SQLite's one writer counts itself.
jobs_id_seq = Sequence("jobs_id_seq", metadata=metadata)

#: Upper bounds (ms) of the duration histogram buckets kept in the rollups; one more bucket holds the rest.
DURATION_BUCKETS_MS: tuple[int, ...] = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
BUCKET_COLUMNS: tuple[str, ...] = tuple(f"b{i}" for i in range(len(DURATION_BUCKETS_MS) + 1))

#: Rollup outcomes: one per terminal event, plus ``wait`` (enqueued → started) for queue-wait stats.
ROLLUP_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "retried", "cancelled", "lost", "wait")

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("jk", BigInteger, nullable=False, comment="63-bit hash of (lib, app, job_id)"),
    Column("lib", String(32), nullable=False),
    Column("app", String(200), nullable=False),
    Column("job_id", String(512), nullable=False),
    Column("task", String(512)),
    Column("queue", String(512)),
    Column("state", String(16), nullable=False),
    Column("ver", BigInteger, nullable=False, comment="merge rank of the event that set the state"),
    Column("attempt", Integer),
    Column("max_attempts", Integer),
    Column("worker", String(512)),
    Column("created_at", Float, nullable=False, comment="earliest event time seen for the job"),
    Column("enqueued_at", Float),
    Column("eta", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("duration_ms", Float),
    Column("cpu_ms", Float),
    Column("exc_type", String(512)),
    Column("exc_message", Text),
    Column("retry_in_s", Float),
    Column("reason", String(512)),
    Column("args", Text),
    Column("result", Text),
    Column("payload_bytes", Integer),
    Column("correlation_id", String(512)),
    Column("trace_id", String(64)),
    Column("payload", Text, comment="JSON needed to enqueue again; only on final failures"),
    Column("veid", BigInteger, nullable=False, default=0, comment="event-id hash that breaks ties of ver"),
    Column("started_attempt", Integer, comment="attempt whose job-started set started_at"),
    Column("exc_ver", BigInteger, comment="merge rank of the job-failed that set exc_type/exc_message"),
    Index("jobs_jk", "jk"),
    # PostgreSQL is shared by several dashboard processes: the natural key is enforced there.
    # SQLite has one ingest writer, which checks the key itself (a random UNIQUE index costs ~20 %).
    Index("jobs_key", "lib", "app", "job_id", unique=True).ddl_if(dialect="postgresql"),
    Index("jobs_state_id", "state", "id"),
    Index("jobs_task_id", "task", "id"),
    Index("jobs_created", "created_at"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job", BigInteger, nullable=False, comment="jobs.id"),
    Column("eid", BigInteger, nullable=False, comment="63-bit hash of the event id (deduplication)"),
    Column("ts", Float, nullable=False),
    Column("type", String(32), nullable=False),
    Column("attempt", Integer),
    Column("worker", String(512)),
    Column("duration_ms", Float),
    Column("exc_type", String(512)),
    Column("exc_message", Text),
    Column("traceback", Text),
    Column("retry_in_s", Float),
    Column("final", Boolean),
    Column("reason", String(512)),
    Column("extra", Text, comment="JSON of the event's remaining fields, unknown ones included"),
    Index("job_events_job", "job"),
    Index("job_events_job_eid", "job", "eid", unique=True).ddl_if(dialect="postgresql"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lib", String(32), nullable=False),
    Column("app", String(200), nullable=False),
    Column("worker", String(512), nullable=False),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("state", String(16), nullable=False),
    Column("started_at", Float),
    Column("last_seen_at", Float, nullable=False),
    Column("stopped_at", Float),
    Column("concurrency", Integer),
    Column("inflight", Integer),
    Column("processed", Integer),
    Column("failed", Integer),
    Column("loop_lag_ms", Float),
    Column("rss_bytes", BigInteger),
    Column("dropped", Integer),
    Column("queues", Text, comment="JSON list"),
    Column("extra", Text, comment="JSON of the last heartbeat's other fields"),
    UniqueConstraint("lib", "app", "worker", name="workers_key"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lib", String(32), nullable=False),
    Column("app", String(200), nullable=False),
    Column("name", String(512), nullable=False),
    Column("task", String(512)),
    Column("cron", String(200)),
    Column("interval_s", Float),
    Column("timezone", String(64)),
    Column("registered_at", Float),
    Column("last_fired_at", Float),
    Column("last_slot", Float),
    Column("fires", Integer, nullable=False, default=0),
    Column("extra", Text),
    UniqueConstraint("lib", "app", "name", name="schedules_key"),
)

schedule_fires = Table(
    "schedule_fires",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("eid", String(64), nullable=False, unique=True),
    Column("lib", String(32), nullable=False),
    Column("app", String(200), nullable=False),
    Column("schedule", String(512), nullable=False),
    Column("slot", Float),
    Column("fired_at", Float, nullable=False),
    Column("scheduler", String(512)),
    Column("job_id", String(512)),
    Index("schedule_fires_key", "lib", "app", "schedule", "slot"),
)

schedulers = Table(
    "schedulers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lib", String(32), nullable=False),
    Column("app", String(200), nullable=False),
    Column("scheduler", String(512), nullable=False),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("started_at", Float),
    Column("last_seen_at", Float, nullable=False),
    UniqueConstraint("lib", "app", "scheduler", name="schedulers_key"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stream_id", String(64), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", Text, comment="the entry as received (cut at 64 KiB)"),
    Column("raw_bytes", Integer),
)


def _rollup(name: str, time_col: str, key: tuple[str, ...]) -> Table:
    return Table(
        name,
        metadata,
        Column(time_col, Integer, nullable=False, comment="unix seconds at the period's start"),
        Column("lib", String(32), nullable=False),
        Column("app", String(200), nullable=False),
        Column("task", String(512), nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("n", Integer, nullable=False),
        Column("sum_ms", Float, nullable=False),
        Column("max_ms", Float, nullable=False),
        *(Column(b, Integer, nullable=False, default=0) for b in BUCKET_COLUMNS),
        # Task-first minute key: per-task charts are a PK range; outcome-first hour key: failure groups.
        PrimaryKeyConstraint(*key, name=f"{name}_pk"),
        sqlite_with_rowid=False,
    )


rollup_minute = _rollup("rollup_minute", "minute", ("lib", "app", "task", "outcome", "minute"))
rollup_hour = _rollup("rollup_hour", "hour", ("outcome", "hour", "lib", "app", "task"))

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
    comment="ingest counters: events_ingested, quarantined, duplicates",
)
