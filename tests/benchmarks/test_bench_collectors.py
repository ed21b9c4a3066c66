"""``flowerbed bench collectors`` runs end to end for one library and reports its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

pytestmark = [pytest.mark.slow, pytest.mark.libenv]


@pytest.mark.timeout(900)
def test_bench_collectors_reports_celery() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    before = set(client.scan_iter("fbbench:*"))
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard", "bench", "collectors", "--libs", "celery", "--jobs", "200", "--json"],
        capture_output=True, text=True, timeout=850,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "celery: throughput" in proc.stderr  # progress goes to stderr, the JSON alone to stdout
    report = json.loads(proc.stdout)
    result = report["libs"]["celery"]
    for field in ("us_per_job_baseline", "jobs_per_s_without", "jobs_per_s_with"):
        assert result[field] > 0, field
    # The collector's cost and the loss are differences: on a busy machine either may come out <= 0.
    for field in ("us_per_job", "us_per_job_wall", "loss_pct", "loss_pct_median"):
        assert isinstance(result[field], (int, float)), field
    assert len(result["loss_pct_pairs"]) == 3  # one loss per alternation (the default --repeat)
    # Every job's start and end reach the stream (the sentinels and worker events besides), as rows of few entries.
    assert result["throughput"]["events_per_run"] and min(result["throughput"]["events_per_run"]) >= 2 * 200
    assert max(result["throughput"]["entries_per_run"]) < 100
    assert result["emitter_us_per_job_inproc"] > 0 and isinstance(result["cpu_loss_pct_estimate"], float)
    assert report["goals"] == {"us_per_job": 5.0, "loss_pct": 2.0}
    # Beside it, what Flower needs of a Celery worker: its own task events, timed in the same alternations.
    reference = result["reference"]
    assert reference["name"] == "celery_events" and reference["jobs_per_s"] > 0
    assert len(result["throughput"]["runs"]["celery_events"]) == 3 and "--task-events" in reference["what"]
    assert len(report["load_avg"]) == 3
    # The yardsticks timed on this machine, and the job thread's cost counted in the first of them.
    machine = report["machine"]
    assert 0 < machine["build_queue_us"] < 50 and 0 < machine["serialise_us"] < 50 and machine["serialiser"] == "orjson"
    assert result["events_built_per_job_cost"] == pytest.approx(result["us_per_job"] / machine["build_queue_us"], abs=0.1)
    assert set(client.scan_iter("fbbench:*")) == before  # queues, keys and streams are gone
    client.close()


@pytest.mark.timeout(900)
def test_bench_collectors_counts_a_real_arq_workers_instructions_under_valgrind() -> None:
    """``--valgrind`` runs the real worker under callgrind in both modes and reports per-job counts,
    cut between the sentinel jobs: the worker with the collector runs more instructions per job than
    the one without."""
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        pytest.skip("valgrind is not installed (.ci/run installs it)")
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard", "bench", "collectors", "--libs", "arq", "--skip-throughput",
         "--inproc-repeat", "2", "--jobs", "200", "--valgrind", "--valgrind-jobs", "300", "--json"],
        capture_output=True, text=True, timeout=850,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arq: under valgrind, with collector, 300 jobs (run 1/1)" in proc.stderr
    counted = json.loads(proc.stdout)["libs"]["arq"]["valgrind"]
    without, with_ = counted["ir_per_job_without"], counted["ir_per_job_with"]
    assert 100_000 < without < with_  # a job is a real worker's; the collector's hooks add to it
    assert abs(counted["ir_added_per_job"] - (with_ - without)) <= 1 and with_ - without > 5_000
    assert counted["ir_loss_pct"] == pytest.approx((with_ - without) / with_ * 100, abs=0.01)
    assert 0 < counted["cycles_loss_pct"] and counted["jobs"] == 300
    assert counted["ir_per_job_runs"] == {"without": [without], "with": [with_]}
    # The job's own thread, in-process: the collector's hooks add to the library's own path.
    assert "arq: job thread under valgrind, with collector, 300 jobs in-process" in proc.stderr
    thread = json.loads(proc.stdout)["libs"]["arq"]["valgrind_job_thread"]
    assert 20_000 < thread["ir_per_job_without"] < thread["ir_per_job_with"] < without
    assert thread["ir_added_per_job"] == thread["ir_per_job_with"] - thread["ir_per_job_without"] > 3_000


@pytest.mark.timeout(900)
def test_bench_collectors_times_dramatiq_beside_its_prometheus_middleware(tmp_path: Path) -> None:
    """Dramatiq's third run has Dramatiq's own Prometheus middleware in the worker (its exposition
    server forked by the dramatiq command); its metrics files and processes are gone afterwards."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    before = set(client.scan_iter("fbbench:*"))
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard", "bench", "collectors", "--libs", "dramatiq", "--jobs", "200",
         "--repeat", "1", "--inproc-repeat", "2", "--json"],
        capture_output=True, text=True, timeout=850, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dramatiq: throughput dramatiq prometheus, run 1/1, 200 jobs" in proc.stderr
    result = json.loads(proc.stdout)["libs"]["dramatiq"]
    reference = result["reference"]
    assert reference["name"] == "dramatiq_prometheus" and reference["jobs_per_s"] > 0
    assert "Prometheus middleware" in reference["what"] and len(result["throughput"]["runs"]["dramatiq_prometheus"]) == 1
    assert not list(tmp_path.glob("*prometheus*"))  # the run's metrics directory is removed
    assert set(client.scan_iter("fbbench:*")) == before
    client.close()
