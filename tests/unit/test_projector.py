"""The projector alone: any order and any duplication of a job's events give the same row."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.ingest.projector import COLUMNS, fold, mark_lost, merge_rows, rollup_outcome
from dashboard.store.keys import event_key

LIB, APP, JOB = "arq", "shop", "job-1"
T0 = 1_700_000_000.0


def ev(etype: str, ts: float, attempt: int = 1, eid: str | None = None, **fields: object) -> dict[str, object]:
    event = {"v": 1, "id": eid or f"{etype}-{attempt}-{ts}", "type": etype, "ts": ts, "lib": LIB, "app": APP,
             "job_id": JOB, "attempt": attempt, **fields}
    return event


def items(events: list[dict[str, object]]) -> list[tuple[int, dict[str, object]]]:
    return [(event_key(str(e["id"])), e) for e in events]


def row_of(events: list[dict[str, object]]) -> dict[str, object]:
    return dict(zip(COLUMNS, fold(None, items(events))))


def test_a_retried_job_that_succeeds() -> None:
    row = row_of([
        ev("job-enqueued", T0, task="t", queue="q", args='{"args":[1]}'),
        ev("job-started", T0 + 1, worker="w1"),
        ev("job-failed", T0 + 2, worker="w1", final=False, exc_type="E", exc_message="boom", retry_in_s=5.0),
        ev("job-enqueued", T0 + 7, attempt=2),
        ev("job-started", T0 + 8, attempt=2, worker="w2"),
        ev("job-succeeded", T0 + 9, attempt=2, worker="w2", duration_ms=1000.0),
    ])
    assert row["state"] == "succeeded" and row["attempt"] == 2 and row["worker"] == "w2"
    assert row["enqueued_at"] == T0 and row["started_at"] == T0 + 8 and row["finished_at"] == T0 + 9
    assert row["created_at"] == T0 and row["updated_at"] == T0 + 9 and row["duration_ms"] == 1000.0
    assert row["exc_type"] == "E" and row["task"] == "t" and row["queue"] == "q"


def test_states_of_failures_and_retries() -> None:
    assert row_of([ev("job-failed", T0, final=True)])["state"] == "failed"
    assert row_of([ev("job-failed", T0, final=False)])["state"] == "retrying"
    assert row_of([ev("job-failed", T0)])["state"] == "retrying"
    assert row_of([ev("job-failed", T0), ev("job-enqueued", T0 + 1, attempt=2)])["state"] == "retrying"
    assert row_of([ev("job-enqueued", T0), ev("job-started", T0 + 1)])["state"] == "running"
    assert row_of([ev("job-cancelled", T0, reason="revoked")])["reason"] == "revoked"


def test_a_terminal_event_outranks_a_later_started_of_the_same_attempt() -> None:
    row = row_of([ev("job-succeeded", T0 + 1), ev("job-started", T0 + 5)])
    assert row["state"] == "succeeded"


def test_lost_is_kept_until_an_event_outranks_it() -> None:
    running = fold(None, items([ev("job-enqueued", T0), ev("job-started", T0 + 1, worker="w")]))
    lost = mark_lost(running)
    again = fold(lost, items([ev("job-enqueued", T0)]))  # a late, lower-ranked event
    assert dict(zip(COLUMNS, again))["state"] == "lost"
    done = fold(lost, items([ev("job-succeeded", T0 + 2, worker="w")]))
    assert dict(zip(COLUMNS, done))["state"] == "succeeded"


def test_unknown_types_only_touch_the_times() -> None:
    row = row_of([ev("job-enqueued", T0), ev("job-progress", T0 + 3, percent=50)])
    assert row["state"] == "queued" and row["updated_at"] == T0 + 3


def test_rollup_outcomes() -> None:
    events = [ev("job-enqueued", T0), ev("job-started", T0 + 2), ev("job-failed", T0 + 3, final=True)]
    row = fold(None, items(events))
    assert rollup_outcome(row, events[1]) == ("wait", 2000.0)
    assert rollup_outcome(row, events[2]) == ("failed", 1000.0)
    assert rollup_outcome(row, ev("job-failed", T0 + 3, final=False, duration_ms=5.0)) == ("retried", 5.0)
    assert rollup_outcome(row, events[0]) is None


# --- the property: order and duplicates do not matter ------------------------------------------

TYPES = ("job-enqueued", "job-started", "job-succeeded", "job-failed", "job-cancelled", "job-progress")


@st.composite
def job_events(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(1, 10))
    out = []
    for i in range(n):
        etype = draw(st.sampled_from(TYPES))
        fields: dict[str, object] = {}
        if draw(st.booleans()):
            fields["worker"] = draw(st.sampled_from(["w1", "w2"]))
        if etype == "job-failed":
            fields["final"] = draw(st.booleans())
            fields["exc_type"] = draw(st.sampled_from(["E1", "E2"]))
            fields["exc_message"] = draw(st.sampled_from(["a", "b"]))
        if draw(st.booleans()):
            fields["task"] = draw(st.sampled_from(["t1", "t2"]))
        if draw(st.booleans()):
            fields["duration_ms"] = draw(st.floats(0, 1e4, allow_nan=False))
        if draw(st.booleans()):
            fields["enqueued_at"] = T0 + draw(st.integers(0, 20))
        if etype == "job-failed" and fields["final"]:
            fields["payload"] = {"args": [draw(st.integers(0, 3))]}
        # Times collide on purpose (same ms, same attempt): the event-id tiebreak must decide.
        ts = T0 + draw(st.integers(0, 20)) / 4
        out.append(ev(etype, ts, attempt=draw(st.integers(1, 3)), eid=f"e{i}", **fields))
    return out


@settings(max_examples=300, deadline=None)
@given(events=job_events(), seed=st.integers(0, 2**32 - 1), dups=st.integers(0, 5))
def test_any_order_and_any_duplicates_give_the_same_row(events: list[dict[str, object]], seed: int,
                                                        dups: int) -> None:
    rng = random.Random(seed)
    expected = fold(None, items(events))
    shuffled = events + [rng.choice(events) for _ in range(dups)]
    rng.shuffle(shuffled)
    # Split the delivery in two batches: merging into a stored row must agree with one fold.
    cut = rng.randrange(len(shuffled) + 1)
    first = fold(None, items(shuffled[:cut])) if cut else None
    got = fold(first, items(shuffled[cut:])) if cut < len(shuffled) else first
    assert got is not None
    assert dict(zip(COLUMNS, got)) == dict(zip(COLUMNS, expected))


@settings(max_examples=300, deadline=None)
@given(events=job_events(), seed=st.integers(0, 2**32 - 1), dups=st.integers(0, 5), lost=st.booleans())
def test_merging_folded_parts_gives_the_row_of_one_fold(events: list[dict[str, object]], seed: int, dups: int,
                                                         lost: bool) -> None:
    """SQLite ingest folds each batch's events apart and merges the result into the stored row."""
    rng = random.Random(seed)
    shuffled = events + [rng.choice(events) for _ in range(dups)]
    rng.shuffle(shuffled)
    cut = rng.randrange(1, len(shuffled) + 1)
    stored = fold(None, items(shuffled[:cut]))
    if lost:
        stored = mark_lost(stored)
    expected = fold(stored, items(shuffled[cut:])) if cut < len(shuffled) else list(stored)
    got = list(stored)
    if cut < len(shuffled):
        merge_rows(got, fold(None, items(shuffled[cut:])))
    assert dict(zip(COLUMNS, got)) == dict(zip(COLUMNS, expected))
