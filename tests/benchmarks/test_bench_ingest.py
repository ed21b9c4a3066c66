"""``flowerbed bench ingest`` runs end to end on a small stream and reports its figures."""

from __future__ import annotations

import json

import pytest
import redis

from dashboard.bench.ingest import main

pytestmark = pytest.mark.slow


def test_bench_ingest_reports_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    before = set(client.scan_iter("flowerbed:bench:*"))
    assert main(["--events", "20000", "--json", "--redis-url", "redis://127.0.0.1:6379/0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["events"] >= 20_000 and result["events_per_s"] > 0 and result["exit_code"] == 0
    assert result["last_10pct_events_per_s"] > 0 and result["db_bytes"] > 0
    assert len(result["peak_rss_mb"]) == 2  # the reading process and the writer
    assert set(client.scan_iter("flowerbed:bench:*")) == before  # its private stream is gone
    client.close()
