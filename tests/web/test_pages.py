"""Route tests on a real SQLite file: template, context, htmx fragments, and escaping."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from tests.web.conftest import EVIL_TASK, TestClient, htmx


def _template(response: Any) -> str:
    return response.template if isinstance(response.template, str) else response.template.name


def test_overview_page_and_fragment(client: TestClient) -> None:
    r = client.get("/?window=1h")
    assert r.status_code == 200
    assert _template(r) == "pages/overview.html"
    assert r.headers["vary"] == "HX-Request"
    stats = r.context["stats"]
    assert stats["attempts"] > 2000 and stats["counts"]["succeeded"] > 0
    assert r.context["window"].name == "1h" and len(stats["bins"]) == 60
    assert stats["dlq"] >= stats["counts"]["failed"] > 0
    assert stats["slowest"][0]["p95_ms"] >= stats["slowest"][-1]["p95_ms"]
    assert {a["lib"] for a in stats["apps"]} == {"arq", "celery", "dramatiq", "taskiq"}
    assert stats["workers_online"] == 22 and stats["workers_lost"] == 2
    assert '<section id="overview"' in r.text and "<svg" in r.text and "<html" in r.text
    # The page links each number into the filtered jobs list.
    assert 'href="/jobs?range=1h&amp;state=failed"' in r.text

    frag = client.get("/?window=1h", headers=htmx("overview"))
    assert frag.status_code == 200 and frag.headers["vary"] == "HX-Request"
    assert frag.text.lstrip().startswith('<section id="overview"') and "<html" not in frag.text


def test_overview_windows_and_lib_filter(client: TestClient) -> None:
    for window in ("15m", "24h", "7d"):
        r = client.get(f"/?window={window}")
        assert r.status_code == 200 and r.context["window"].name == window
    r = client.get("/?window=24h&lib=celery")
    assert {a["lib"] for a in r.context["stats"]["apps"]} == {"celery"}


def test_api_stats_is_the_overviews_twin(client: TestClient, seeded: dict[str, Any]) -> None:
    body = client.get("/api/stats?window=24h").json()
    assert set(body) >= {"counts", "throughput", "failure_rate", "duration_ms", "queue_wait_ms", "slowest_tasks",
                         "failing_tasks", "apps", "workers_online", "dlq_size", "since", "until"}
    db = sqlite3.connect(seeded["path"])
    succeeded = db.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()[0]
    failed = db.execute("SELECT count(*) FROM jobs WHERE state = 'failed' AND finished_at IS NOT NULL").fetchone()[0]
    db.close()
    assert body["counts"]["succeeded"] == succeeded and body["counts"]["failed"] == failed
    assert sum(b["succeeded"] for b in body["throughput"]) == succeeded
    assert 0 < body["duration_ms"]["p50_ms"] <= body["duration_ms"]["p95_ms"]
    assert body["throughput"][0]["t"].endswith("Z")
    since = client.get("/api/stats?since=2020-01-01T00:00:00Z&until=2020-01-01T01:00:00Z").json()
    assert since["attempts"] == 0 and since["bin_s"] == 60
    assert client.get("/api/stats?since=yesterday").status_code == 400


def test_jobs_list_filters_pages_and_fragments(client: TestClient) -> None:
    r = client.get("/jobs")
    assert r.status_code == 200 and _template(r) == "pages/jobs.html"
    rows = r.context["rows"]
    assert len(rows) == 50 and r.context["next_cursor"] and r.context["live"]["after"] == rows[0]["id"]
    assert [x["id"] for x in rows] == sorted((x["id"] for x in rows), reverse=True)
    assert r.text.count('<tr id="job-') == 50

    page2 = client.get(f"/jobs?cursor={r.context['next_cursor']}")
    assert page2.context["live"] is None  # no live rows when reading history
    assert page2.context["rows"][0]["id"] < rows[-1]["id"]

    failed = client.get("/jobs?state=failed&range=1h").context["rows"]
    assert failed and {j["state"] for j in failed} == {"failed"}
    searched = client.get("/jobs", params={"q": "task:send_email exc:Timeout"}).context["rows"]
    assert searched and all(j["task"] == "send_email" and j["exc_type"] == "TimeoutError" for j in searched)
    by_lib = client.get("/jobs?lib=dramatiq&app=mailer").context["rows"]
    assert by_lib and {(j["lib"], j["app"]) for j in by_lib} == {("dramatiq", "mailer")}

    frag = client.get("/jobs?state=failed", headers=htmx("job-results"))
    assert frag.text.lstrip().startswith('<section id="job-results"') and "<html" not in frag.text
    assert frag.headers["vary"] == "HX-Request"
    assert client.get("/jobs?state=nope").status_code == 400


def test_jobs_live_rows_fragment(client: TestClient, seeded: dict[str, Any]) -> None:
    rows = client.get("/jobs").context["rows"]
    after = rows[5]["id"]
    r = client.get(f"/jobs?after={after}&low={rows[-1]['id']}&changed=0", headers=htmx("job-rows"))
    assert r.status_code == 200 and r.context["fresh"] and len(r.context["fresh"]) == 5
    assert [j["id"] for j in r.context["fresh"]] == [j["id"] for j in rows[:5]]
    assert 'class="fresh"' in r.text and 'id="jobs-live"' in r.text and 'hx-swap-oob="true"' in r.text
    assert f"after={rows[0]['id']}" in r.text  # the marker moves up to the newest row shown
    # Last refreshed after every seeded change (the newest job was updated a second before seeding ended).
    none_new = client.get(f"/jobs?after={rows[0]['id']}&changed={seeded['now'] + 5}", headers=htmx("job-rows"))
    assert none_new.context["fresh"] == [] and "<tr" not in none_new.text


def test_job_detail_timeline_and_404(client: TestClient, seeded: dict[str, Any]) -> None:
    lib, app, job_id = seeded["samples"]["failed"]
    r = client.get(f"/jobs/{lib}/{app}/{job_id}")
    assert r.status_code == 200 and _template(r) == "pages/job_detail.html"
    job = r.context["job"]
    assert job["state"] == "failed" and len(job["attempts"]) == 3
    lanes = r.context["timeline"]["lanes"]
    assert [lane["attempt"]["outcome"] for lane in lanes] == ["retrying", "retrying", "failed"]
    assert all(0 <= s["left"] <= 100 and s["width"] > 0 for lane in lanes for s in lane["segments"])
    assert r.text.count('class="attempt-lane"') == 3 and "<details" in r.text and "Traceback" in r.text
    assert f'/jobs?correlation_id={job["correlation_id"]}' in r.text
    frag = client.get(f"/jobs/{lib}/{app}/{job_id}", headers=htmx("job-main"))
    assert frag.text.lstrip().startswith('<section id="job-main"')
    missing = client.get("/jobs/celery/shop/no-such-job")
    assert missing.status_code == 404 and _template(missing) == "pages/error.html"


def test_workers_page(client: TestClient, seeded: dict[str, Any]) -> None:
    r = client.get("/workers?span=1h")
    assert r.status_code == 200 and _template(r) == "pages/workers.html"
    assert r.context["counts"] == {"online": 22, "lost": 2, "offline": 0}
    assert [w["state"] for w in r.context["lost"]] == ["lost", "lost"]
    assert 'id="lost-workers"' in r.text
    # The timeline is its own fragment: the page names the lanes and htmx loads the bars at once.
    assert r.context["lanes"] is None and len(r.context["shown"]) == 24
    assert 'id="lanes" hx-get="/workers/lanes?span=1h"' in r.text and 'hx-trigger="load,' in r.text
    assert r.text.count('class="swimlane ') == 24 and "<noscript>" in r.text

    full = client.get("/workers/lanes?span=1h")  # without JavaScript: the same page, timeline drawn in
    assert full.status_code == 200 and _template(full) == "pages/workers.html"
    lanes = full.context["lanes"]
    assert lanes and sum(len(lane["bars"]) for lane in lanes) > 100
    assert all(0 <= b["left"] <= 100 and b["n"] >= 1 for lane in lanes for b in lane["bars"])
    assert 'class="bar o-' in full.text and 'id="lost-workers"' in full.text
    # Every job that ran in the span is drawn, alone or inside a merged bar.
    since, until = full.context["since"], full.context["until"]
    db = sqlite3.connect(seeded["path"])
    ran = db.execute("SELECT count(*) FROM jobs WHERE worker IS NOT NULL AND started_at < ? "
                     "AND coalesce(finished_at, ?) >= ?", (until, until, since)).fetchone()[0]
    db.close()
    assert sum(lane["jobs"] for lane in lanes) == ran
    failed = [b for lane in lanes for b in lane["bars"] if b["state"] == "failed" and b["n"] == 1]
    assert failed and all(b["href"].startswith("/jobs/") and " · failed" in b["title"] for b in failed)
    merged = [b for lane in lanes for b in lane["bars"] if b["n"] > 1]
    assert merged and all(b["href"].startswith("/jobs?worker=") for b in merged)
    assert f'data-n="{merged[0]["n"]}"' in full.text

    frag = client.get("/workers/lanes?span=1h", headers=htmx("lanes"))
    assert frag.text.lstrip().startswith('<section class="card" id="lanes"') and "<html" not in frag.text
    assert 'class="bar o-' in frag.text and 'hx-trigger="sse:jobs' in frag.text
    one = lanes[0]["worker"]["worker"]
    only = client.get("/workers", params={"worker": one})
    assert [w["worker"] for w in only.context["workers"]] == [one]
    frag = client.get("/workers", headers=htmx("workers-main"))
    assert frag.text.lstrip().startswith('<section id="workers-main"') and 'class="bar' not in frag.text


def test_status_page(client: TestClient) -> None:
    r = client.get("/status")
    assert r.status_code == 200 and _template(r) == "pages/status.html"
    status = r.context["status"]
    assert status["quarantined"] == 25 and len(status["quarantine"]) == 25
    assert "missing required field: app" in r.text
    frag = client.get("/status", headers=htmx("status-main"))
    assert frag.text.lstrip().startswith('<section id="status-main"')


def test_worker_strings_are_escaped(client: TestClient) -> None:
    listing = client.get("/jobs?lib=arq&app=api&state=failed").text
    detail = client.get("/jobs/arq/api/evil-1").text
    for page in (listing, detail):
        assert EVIL_TASK not in page and "&lt;script&gt;" in page
        assert "<img src=x" not in page and "<b>bold</b>" not in page
    assert "<script>alert(2)" not in detail
    # Only our own scripts, by src.
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", detail))


def test_pages_work_without_javascript(client: TestClient) -> None:
    # The filter form is a plain GET form; pagination and windows are plain links.
    r = client.get("/jobs")
    assert '<form id="job-filters" class="filters" action="/jobs" method="get"' in r.text
    assert 'rel="next"' in r.text
    # Times are rendered in UTC by the server, converted by app.js when it runs.
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z" title="[^"]+ UTC">', r.text)
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/app.css").status_code == 200
