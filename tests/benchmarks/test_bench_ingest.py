"""``flowerbed bench ingest`` runs end to end on a small stream, in both formats, and reports its figures."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis

from collectors.events import decode_rows, dumps_bytes, rows_entry, split_started
from dashboard.bench.ingest import main
from dashboard.bench.workload import events, rows

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["rows", "events"])
def test_bench_ingest_counts_the_events_it_filled(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    before = set(client.scan_iter("flowerbed:bench:*"))
    assert main(["--events", "20000", "--format", fmt, "--json", "--redis-url", REDIS_URL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == fmt and result["exit_code"] == 0
    # Every event filled was counted once, as ingest itself counted it (an end carrying its start: two).
    ingested = result["ingested"]
    assert result["events"] >= 20_000 and ingested["quarantined"] == 0
    assert result["events"] == ingested["events_ingested"] + ingested.get("duplicates", 0)
    if fmt == "rows":  # a worker's job events share entries
        assert result["entries"] * 20 < result["events"]
    else:
        assert result["entries"] == result["events"]
    assert result["events_per_s"] > 0 and result["last_10pct_events_per_s"] > 0 and result["db_bytes"] > 0
    assert len(result["peak_rss_mb"]) == 2  # the reading process and the writer
    assert set(client.scan_iter("flowerbed:bench:*")) == before  # its private stream is gone
    client.close()


def _what(event: dict[str, Any]) -> str:
    """An event without its id, which the two formats give differently."""
    return json.dumps({k: v for k, v in event.items() if k != "id" and v is not None}, sort_keys=True)


def test_rows_are_the_same_workload_as_single_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1.8e9)  # the workload's times end "now": the same now for both
    counts: Counter[str] = Counter()
    read: list[dict[str, Any]] = []
    for item in rows(5_000, seed=3, counts=counts):
        if isinstance(item, dict):
            read.append(item)
            continue
        identity, row = item[0](item)  # as the emitter's thread builds it, then as ingest reads it
        found, bad = decode_rows(dumps_bytes(rows_entry("batch", identity, list(row))))
        assert not bad
        start = split_started(found[0])
        read += [found[0]] if start is None else [start, found[0]]
    single = list(events(5_000, seed=3))
    assert counts["folded"] > len(single) // 10  # most jobs' start went inside their success
    assert len(read) + counts["resend"] == len(single)  # a second delivery is an entry sent again
    assert {_what(e) for e in read} == {_what(e) for e in single}
