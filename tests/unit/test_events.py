"""The v1 protocol as code: building, encoding, redaction, truncation and validation."""

from __future__ import annotations

import json

import pytest

from collectors import events
from collectors.constants import MAX_EVENT_BYTES, REDACTED
from collectors.events import EventType, InvalidEvent, Redactor, build, decode, encode, validate


def roundtrip(event: dict, redactor: Redactor | None = None) -> dict:
    data = encode(event, redactor or Redactor())
    assert data is not None
    return decode(data)


def test_built_event_is_valid_and_carries_protocol_fields() -> None:
    ev = roundtrip(build(EventType.JOB_STARTED, "arq", "shop", job_id="j1", task="send", attempt=1))
    assert ev["v"] == 1 and ev["type"] == "job-started" and ev["lib"] == "arq" and ev["app"] == "shop"
    assert isinstance(ev["ts"], float) and ev["job_id"] == "j1"


def test_event_ids_are_unique() -> None:
    ids = {build("job-started", "arq", "a", job_id="x")["id"] for _ in range(10_000)}
    assert len(ids) == 10_000


def test_none_fields_are_dropped_and_unknown_fields_kept() -> None:
    ev = roundtrip(build("job-succeeded", "celery", "a", job_id="1", duration_ms=None, custom_field="x"))
    assert "duration_ms" not in ev and ev["custom_field"] == "x"


def test_arguments_are_redacted_by_key_and_truncated() -> None:
    redactor = Redactor(args_limit=200)
    ev = roundtrip(build("job-enqueued", "dramatiq", "a", job_id="1", args_raw=("x" * 500,),
                         kwargs_raw={"user": "bob", "Password": "hunter2", "nested": {"api_key": "k"}}), redactor)
    assert "hunter2" not in ev["args"] and '"k"' not in ev["args"]
    assert ev["args"].endswith("…") and len(ev["args"]) <= 201
    full = roundtrip(build("job-enqueued", "dramatiq", "a", job_id="1", args_raw=(1,),
                           kwargs_raw={"user": "bob", "Password": "hunter2", "nested": {"api_key": "k"}}))
    assert json.loads(full["args"]) == {"args": [1], "kwargs": {"user": "bob", "Password": REDACTED,
                                                                  "nested": {"api_key": REDACTED}}}


def test_capture_args_off_sends_no_arguments() -> None:
    ev = roundtrip(build("job-enqueued", "arq", "a", job_id="1", args_raw=("secret-ish",)),
                   Redactor(capture_args=False))
    assert "args" not in ev


def test_custom_redact_patterns() -> None:
    ev = roundtrip(build("job-enqueued", "arq", "a", job_id="1", kwargs_raw={"ssn": "123", "name": "x"}),
                   Redactor(patterns=["ssn"]))
    assert json.loads(ev["args"])["kwargs"] == {"ssn": REDACTED, "name": "x"}


def test_payload_over_the_cap_says_so() -> None:
    capped = events.cap_payload({"args": ["x" * 100]}, limit=50)
    assert capped["truncated"] is True and capped["bytes"] > 50
    assert events.cap_payload({"args": [1]}, limit=50) == {"args": [1]}


def test_traceback_keeps_its_end() -> None:
    text = "line\n" * 10_000 + "ValueError: boom"
    assert events.cap_traceback(text, 100).endswith("ValueError: boom")


def test_oversized_event_sheds_bulky_fields_instead_of_vanishing() -> None:
    ev = roundtrip(build("job-failed", "arq", "a", job_id="1", traceback="x" * (MAX_EVENT_BYTES + 10),
                         exc_type="ValueError"))
    assert "traceback" not in ev and ev["oversize"] > MAX_EVENT_BYTES and ev["exc_type"] == "ValueError"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"v": 1, "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a", "job_id": "1"}', "'id'"),
        (b'{"v": 2, "id": "x", "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a"}', "version"),
        (b'{"v": 1, "id": "x", "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a"}', "job_id"),
        (b'{"v": 1, "id": "x", "type": "job-started", "ts": "now", "lib": "arq", "app": "a", "job_id": "1"}',
         "'ts' must be"),
        (b'{"v": 1, "id": "x", "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a", "job_id": "1",'
         b' "attempt": "2"}', "'attempt' must be"),
        (b'{"v": 1, "id": "x", "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a", "job_id": "1",'
         b' "attempt": 0}', "1-based"),
        (b'{"v": 1, "id": "x", "type": "job-started", "ts": 1700000000000, "lib": "arq", "app": "a",'
         b' "job_id": "1"}', "seconds"),
        (b'{"v": 1, "id": "x", "type": "worker-heartbeat", "ts": 1.0, "lib": "arq", "app": "a"}', "worker"),
        (b'{"v": true, "id": "x", "type": "job-started", "ts": 1.0, "lib": "arq", "app": "a", "job_id": "1"}',
         "version"),
        (b"x" * (MAX_EVENT_BYTES + 1), "over the"),
    ],
)
def test_invalid_entries_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    assert reason in info.value.reason


def test_unknown_types_are_valid() -> None:
    ev = {"v": 1, "id": "x", "type": "job-progress", "ts": 1.5, "lib": "arq", "app": "a", "pct": 50}
    assert validate(ev) is ev


def test_complete_fills_the_given_dict_like_build() -> None:
    fields = {"job_id": "j1", "attempt": 2, "ts": 1700000000.25}
    event = events.complete(fields, EventType.JOB_SUCCEEDED, "taskiq", "shop")
    assert event is fields  # in place: no copy
    built = build(EventType.JOB_SUCCEEDED, "taskiq", "shop", job_id="j1", attempt=2, ts=1700000000.25)
    assert {k: v for k, v in event.items() if k != "id"} == {k: v for k, v in built.items() if k != "id"}
    assert roundtrip(event)["ts"] == 1700000000.25


def test_events_without_none_values_encode_the_same_as_with_them() -> None:
    plain = build("job-succeeded", "arq", "a", job_id="1", attempt=1, ts=1.5)
    with_none = dict(plain, result=None, eta=None)
    assert encode(dict(plain), Redactor()) == encode(with_none, Redactor())


def test_an_event_encoded_with_its_identity_tail_equals_the_built_one() -> None:
    """The emitter's fast path (fields + pre-serialised identity) gives the same event as build + encode."""
    identity = ("celery", "shop", "host-1", 42, "host-1:42:abc")
    fields = {"job_id": "j1", "task": "send", "attempt": 1, "ts": 1700000000.25, "queue": None,
              "args_raw": (1, "x"), "kwargs_raw": {"password": "hunter2"}}
    tail = events.identity_tail("job-started", *identity)
    fast = decode(events.encode_with_tail(dict(fields), tail, Redactor()))
    lib, app, host, pid, worker = identity
    slow = roundtrip(build("job-started", lib, app, host=host, pid=pid, worker=worker, **fields))
    assert fast.pop("id") != slow.pop("id")
    assert fast == slow and "queue" not in fast and REDACTED in fast["args"]


def test_an_event_too_big_for_its_tail_is_left_to_encode() -> None:
    tail = events.identity_tail("job-failed", "arq", "a", "h", 1, "w")
    big = {"job_id": "j", "ts": 1.0, "traceback": "x" * MAX_EVENT_BYTES}
    assert events.encode_with_tail(big, tail, Redactor()) is None


def test_an_end_carrying_its_start_gives_the_start_back() -> None:
    end = validate(build("job-succeeded", "celery", "shop", job_id="j", task="t", attempt=2, worker="w", ts=10.5,
                         started_at=10.0, duration_ms=500.0, cpu_ms=1.0, args='{"args":[1]}', trace_id="ab"))
    start = events.split_started(end)
    assert start is not None and "started_at" not in end
    assert validate(start) is start and start["type"] == "job-started" and start["ts"] == 10.0
    assert start["id"] == end["id"] + ".s"
    assert (start["job_id"], start["attempt"], start["worker"], start["args"], start["trace_id"]) == ("j", 2, "w",
                                                                                                       '{"args":[1]}', "ab")
    assert "duration_ms" not in start and "cpu_ms" not in start


def test_started_at_means_nothing_on_other_types_or_out_of_range() -> None:
    started = build("job-started", "arq", "a", job_id="j", started_at=1.0)
    assert events.split_started(started) is None and started["started_at"] == 1.0  # an unknown field, kept
    assert events.split_started(build("job-failed", "arq", "a", job_id="j", started_at=float("nan"))) is None
    with pytest.raises(InvalidEvent, match="started_at"):
        validate(build("job-failed", "arq", "a", job_id="j", started_at="soon"))


def _rows_data(rows_: list, **changes: object) -> bytes:
    """An entry in the nested form (a list per row), which readers still accept."""
    entry = events.rows_entry("b1", ("dramatiq", "shop", "h", 7, "h:7:w"), [])
    del entry["cells"]
    entry["rows"] = rows_
    entry.update(changes)
    return json.dumps(entry).encode()


def test_an_entry_of_flat_cells_reads_back_row_by_row() -> None:
    rows_ = [["job-succeeded", 1.0 + i, f"j{i}"] + [None] * (len(events.ROW_COLS) - 3) for i in range(3)]
    rows_[1][events.C_ARGS] = '{"args":[1]}'
    flat = [cell for row in rows_ for cell in row]
    entry = events.rows_entry("b2", ("arq", "shop", "h", 7, "h:7:w"), flat)
    got, bad = events.decode_rows(json.dumps(entry).encode())
    assert bad == [] and [(e["id"], e["job_id"], e["ts"]) for e in got] == [("b2.0", "j0", 1.0), ("b2.1", "j1", 2.0),
                                                                          ("b2.2", "j2", 3.0)]
    assert got[1]["args"] == '{"args":[1]}' and "args" not in got[0]
    entry["cells"] = flat[:-1]  # not whole rows: no row can be trusted to start where it should
    with pytest.raises(InvalidEvent, match="whole rows"):
        events.decode_rows(json.dumps(entry).encode())


def test_rows_read_back_as_events_with_derived_ids() -> None:
    row = [None] * len(events.ROW_COLS)
    row[:3] = ["job-started", 1700000000.0, "j1"]
    row[-1] = {"pool": "threads", "worker": "not-this"}  # x adds fields, never the sender's
    got, bad = events.decode_rows(_rows_data([row, list(row)]))
    assert bad == []
    assert [e["id"] for e in got] == ["b1.0", "b1.1"]
    assert got[0] == {"v": 1, "lib": "dramatiq", "app": "shop", "host": "h", "pid": 7, "worker": "h:7:w",
                      "type": "job-started", "ts": 1700000000.0, "job_id": "j1", "pool": "threads", "id": "b1.0"}


def test_bad_rows_are_reported_alone_and_bad_entries_as_a_whole() -> None:
    good = ["job-started", 1.0, "j1"] + [None] * (len(events.ROW_COLS) - 3)
    got, bad = events.decode_rows(_rows_data([good, ["job-started"], good[:2] + [None] + good[3:]]))
    assert [e["job_id"] for e in got] == ["j1"]
    assert [i for i, _ in bad] == [1, 2] and "not a list" in bad[0][1] and "job_id" in bad[1][1]
    for data, reason in [
        (b"[", "not JSON"),
        (_rows_data([good], cols="type"), "'cols'"),
        (_rows_data([good], cols=["type", "id"]), "entry fields"),
        (_rows_data([good], id=None), "'id'"),
        (_rows_data([good], rows={}), "'rows'"),
        (_rows_data([good], cells={}), "'cells'"),
    ]:
        with pytest.raises(InvalidEvent, match=reason):
            events.decode_rows(data)


def _one_by_one(cells: list, redactor: Redactor) -> list:
    return [c if c is None or type(c) is str
            else events.preview(c[1], c[2], redactor) if type(c) is tuple and len(c) == 3 and c[0] is events.ARGS_KWARGS
            else events.preview(c, None, redactor) for c in cells]


@pytest.mark.parametrize("fast_json", [False, True])
def test_a_column_of_arguments_previews_as_each_cell_would_alone(fast_json: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if fast_json:
        pytest.importorskip("orjson")
        monkeypatch.setattr(events, "_dumps_bytes", events._dumps_bytes)
        events.use_fast_json()
    redactor = Redactor(args_limit=64)
    plain = [[1, 2.5, None, True], None, [], ["ok", "é" * 30], [7] * 16, ["x" * 256], (3, "t")]
    assert events._plain_lists(plain)
    got = events.previews(plain, redactor)
    assert got == _one_by_one(plain, redactor)
    assert got[0] == '{"args":[1,2.5,null,true]}' and got[1] is None and got[2] == "{}"
    assert got[5].endswith("…") and len(got[5]) == 65  # cut to the limit
    mixed = plain + [["y" * 257], [{"password": "s"}], (events.ARGS_KWARGS, [1], {"token": "t", "n": 2}), [1] * 17,
                     '{"args":[9]}', ({"password": "s"}, 2)]
    assert not events._plain_lists(mixed)
    got = events.previews(mixed, redactor)
    assert got == _one_by_one(mixed, redactor)
    assert json.loads(got[8])["args"][0]["password"] == REDACTED and json.loads(got[9])["kwargs"]["token"] == REDACTED
    assert got[-2] == '{"args":[9]}' and got[6] == '{"args":[3,"t"]}'
    assert json.loads(got[-1])["args"] == [{"password": REDACTED}, 2]  # a tuple is positional arguments alone
    assert events.previews(plain, Redactor(capture_args=False)) == [None] * len(plain)


def test_plain_arguments_go_as_lists_and_the_reader_previews_them_the_same() -> None:
    """With the default limit a column of plain positional arguments is sent as it is; ingest's
    reading of the entry gives each event the very preview the collector would have sent."""
    redactor = Redactor()
    column = [[1, "a"], None, [], ["x" * 256] * 16]
    assert events.previews(column, redactor) is column
    rows_ = [["job-succeeded", 1.0, f"j{i}"] + [None] * (len(events.ROW_COLS) - 3) for i in range(len(column))]
    for row, args in zip(rows_, column):
        row[events.C_ARGS] = args
    entry = events.rows_entry("b3", ("arq", "shop", "h", 7, "h:7:w"), [cell for row in rows_ for cell in row])
    got, bad = events.decode_rows(json.dumps(entry).encode())
    assert bad == []
    assert [e.get("args") for e in got] == [events.preview(c, None, redactor) if c is not None else None for c in column]
    assert got[0]["args"] == '{"args":[1,"a"]}' and got[2]["args"] == "{}" and len(got[3]["args"]) == 2049
    entry["cells"][events.C_ARGS] = [{"password": "s"}]  # a list a collector would not send raw: redacted still
    got, _ = events.decode_rows(json.dumps(entry).encode())
    assert json.loads(got[0]["args"])["args"][0]["password"] == REDACTED



def test_an_enqueue_time_left_as_its_label_reads_back_as_the_number() -> None:
    """A Taskiq row keeps the producer's enqueue-time label as text; the reader gives the number, and a
    row whose label is not a finite number is reported alone."""
    rows_ = [["job-succeeded", 2.0, f"j{i}"] + [None] * (len(events.ROW_COLS) - 3) for i in range(4)]
    for row, label in zip(rows_, ["1733500000.123456", None, "nan", "soon"]):
        row[events.C_ENQUEUED_AT] = label
    got, bad = events.decode_rows(_rows_data(rows_))
    assert [(e["job_id"], e.get("enqueued_at")) for e in got] == [("j0", 1733500000.123456), ("j1", None)]
    assert [i for i, _ in bad] == [2, 3] and "'enqueued_at'" in bad[0][1] and "'soon'" in bad[1][1]


def test_the_row_columns_are_the_ones_collectors_write_out() -> None:
    """Hot paths write a row as a list display in this order (collectors.taskiq's instrumented
    ``loads``, collectors.dramatiq's and collectors.arq's ``_succeeded_row``): a change here must change
    them too."""
    assert events.ROW_COLS == (
        "type", "ts", "job_id", "task", "queue", "attempt", "max_attempts", "started_at", "duration_ms",
        "cpu_ms", "enqueued_at", "correlation_id", "args", "payload_bytes", "trace_id", "span_id", "eta", "x",
    )
