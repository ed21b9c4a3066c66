"""The pages in Debian's Chromium against a real `flowerbed serve`, fed through the real emitter."""

from __future__ import annotations

import time
from typing import Any

import pytest

from collectors.events import build
from tests.browser.conftest import LOST_AFTER_S, shoot, wait_live
from tests.conftest import Server, publish

pytestmark = pytest.mark.browser

EVIL = '<script>alert("pwned")</script>'


def story(job_id: str, task: str, outcome: str, t0: float, lib: str = "celery", app: str = "shop",
          worker: str = "w-live") -> list[dict[str, Any]]:
    """A job's events: succeeded, retried once then succeeded, or failed after two attempts."""
    c: dict[str, Any] = {"job_id": job_id, "task": task, "queue": "default", "max_attempts": 2}
    evs = [build("job-enqueued", lib, app, ts=t0, args_raw=(7,), kwargs_raw={"password": "hunter2", "to": "ann"}, **c),
           build("job-started", lib, app, ts=t0 + 0.2, attempt=1, worker=worker, **c)]
    if outcome == "succeeded":
        return evs + [build("job-succeeded", lib, app, ts=t0 + 0.5, attempt=1, worker=worker, duration_ms=300.0, **c)]
    evs += [build("job-failed", lib, app, ts=t0 + 0.6, attempt=1, worker=worker, duration_ms=400.0, final=False,
                  exc_type="TimeoutError", exc_message="smtp timed out", retry_in_s=1.0,
                  traceback="Traceback (most recent call last):\nTimeoutError: smtp timed out", **c),
            build("job-enqueued", lib, app, ts=t0 + 0.61, attempt=2, **c),
            build("job-started", lib, app, ts=t0 + 1.7, attempt=2, worker=worker, **c)]
    if outcome == "retried":
        return evs + [build("job-succeeded", lib, app, ts=t0 + 2.0, attempt=2, worker=worker, duration_ms=300.0, **c)]
    return evs + [build("job-failed", lib, app, ts=t0 + 2.1, attempt=2, worker=worker, duration_ms=400.0, final=True,
                        exc_type="ValueError", exc_message="no such mailbox", **c)]


@pytest.fixture(scope="module")
def data(live_server: Server) -> Server:
    """A handful of jobs, a worker that keeps beating and one that went silent (lost)."""
    t0 = time.time() - 120
    events: list[dict[str, Any]] = []
    for i in range(6):
        events += story(f"ok-{i}", "send_email", "succeeded", t0 + i)
    events += story("flaky-1", "send_email", "retried", t0 + 10)
    events += story("dead-1", "charge_card", "failed", t0 + 12, lib="dramatiq", app="billing", worker="w-lost")
    events += story("evil-1", EVIL, "failed", t0 + 14, lib="arq", app="api")
    for worker, lib, app in (("w-live", "celery", "shop"), ("w-lost", "dramatiq", "billing")):
        events.append(build("worker-online", lib, app, worker=worker, host=f"host-{worker}", pid=11, concurrency=4,
                            queues=["default"]))
        events.append(build("worker-heartbeat", lib, app, worker=worker, host=f"host-{worker}", pid=11, inflight=1,
                            processed=8, failed=1, concurrency=4, loop_lag_ms=2.5, rss_bytes=90 << 20))
    events.append(build("job-started", "dramatiq", "billing", job_id="stuck-1", task="charge_card", queue="default",
                        attempt=1, worker="w-lost", ts=time.time() - 5))
    publish(live_server.stream, events)
    live_server.wait_for(lambda: len(live_server.get_json("/api/jobs")["items"]) == 10)
    return live_server


def heartbeat(server: Server) -> None:
    publish(server.stream, [build("worker-heartbeat", "celery", "shop", worker="w-live", host="host-w-live", pid=11,
                                  inflight=2, processed=9, failed=1, concurrency=4, loop_lag_ms=1.5)])


def test_a_published_job_appears_live_without_reload(data: Server, page: Any) -> None:
    page.goto(data.base_url + "/jobs")
    wait_live(page)
    page.evaluate("window.__notReloaded = true")
    assert page.locator("#job-rows tr").count() == 10
    publish(data.stream, story("brand-new-1", "make_invoice", "succeeded", time.time()))
    row = page.locator("#job-rows tr", has_text="brand-new-1")
    row.wait_for(timeout=15_000)
    assert page.locator("#job-rows tr").first.inner_text().find("brand-new-1") >= 0  # at the top
    assert page.evaluate("window.__notReloaded") is True
    assert page.locator("#job-rows tr").count() == 11
    shoot(page, "jobs")


#: Makes ``document.hidden`` / ``visibilityState`` switchable from the test (headless tabs are always visible),
#: and counts the ``jobs`` announcements the page's SSE connection receives.
EMULATE_VISIBILITY = """() => {
  window.__hidden = false;
  window.__jobsAnnounced = 0;
  Object.defineProperty(document, 'hidden', {configurable: true, get: () => window.__hidden});
  Object.defineProperty(document, 'visibilityState', {configurable: true,
                        get: () => (window.__hidden ? 'hidden' : 'visible')});
  document.body.addEventListener('htmx:sseMessage', (e) => {
    if (e.detail && e.detail.type === 'jobs') { window.__jobsAnnounced += 1; }
  });
}"""


def set_hidden(pg: Any, hidden: bool) -> None:
    pg.evaluate("(h) => { window.__hidden = h; document.dispatchEvent(new Event('visibilitychange')); }", hidden)


def test_a_hidden_tab_skips_live_refreshes_and_catches_up_when_shown(data: Server, page: Any) -> None:
    page.goto(data.base_url + "/jobs")
    wait_live(page)
    page.evaluate(EMULATE_VISIBILITY)
    page.evaluate("window.__notReloaded = true")
    rows_before = page.locator("#job-rows tr").count()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "after=" in r.url else None)

    set_hidden(page, True)
    publish(data.stream, story("while-hidden-1", "make_invoice", "succeeded", time.time()))
    data.wait_for(lambda: any(j["job_id"] == "while-hidden-1" for j in data.get_json("/api/jobs")["items"]))
    # The server announced the new job to this page, and the page let it pass without fetching.
    page.wait_for_function("() => window.__jobsAnnounced > 0", timeout=15_000)
    page.wait_for_timeout(1500)
    assert requests == []
    assert page.locator("#job-rows tr").count() == rows_before
    assert "while-hidden-1" not in page.locator("#job-rows").inner_text()

    set_hidden(page, False)
    page.locator("#job-rows tr", has_text="while-hidden-1").wait_for(timeout=15_000)
    assert "while-hidden-1" in page.locator("#job-rows tr").first.inner_text()  # at the top, once
    assert page.locator("#job-rows tr", has_text="while-hidden-1").count() == 1
    assert page.locator("#job-rows tr").count() == rows_before + 1
    assert len(requests) == 1  # one catch-up request, however many announcements were skipped
    assert page.evaluate("window.__notReloaded") is True


def test_filters_and_search_narrow_the_list_and_survive_reload(data: Server, page: Any) -> None:
    page.goto(data.base_url + "/jobs")
    wait_live(page)
    page.select_option("select[name=state]", "failed")
    page.wait_for_url("**/jobs?state=failed")
    page.wait_for_function("() => document.querySelectorAll('#job-rows tr').length === 2")
    states = page.locator("#job-rows .c-state").all_inner_texts()
    assert states == ["failed", "failed"]
    page.fill("#q", "task:charge_card")
    page.wait_for_url("**q=task%3Acharge_card**")
    page.wait_for_function("() => document.querySelectorAll('#job-rows tr').length === 1")
    assert "dead-1" in page.locator("#job-rows").inner_text()
    page.reload()
    assert page.locator("select[name=state]").input_value() == "failed"
    assert page.locator("#q").input_value() == "task:charge_card"
    assert page.locator("#job-rows tr").count() == 1
    page.go_back()
    page.wait_for_url("**/jobs?state=failed")
    page.wait_for_function("() => document.querySelectorAll('#job-rows tr').length === 2")


def test_retried_job_timeline_shows_two_attempts(data: Server, page: Any) -> None:
    page.goto(data.base_url + "/jobs/celery/shop/flaky-1")
    lanes = page.locator(".attempt-lane")
    assert lanes.count() == 2
    assert "retrying" in lanes.nth(0).inner_text() and "succeeded" in lanes.nth(1).inner_text()
    assert page.locator(".attempt-lane .tl-seg.k-retrying").count() == 1
    assert "hunter2" not in page.content()  # redacted by the collector
    page.locator("summary", has_text="Traceback of attempt 1").click()
    assert page.locator("pre.traceback").first.is_visible()
    # Times are shown in the browser's zone, UTC on hover.
    title = page.locator("dl.facts time").first.get_attribute("title")
    assert title and title.endswith("UTC")
    shoot(page, "job-detail")


def test_workers_page_shows_a_lost_worker(data: Server, page: Any) -> None:
    time.sleep(LOST_AFTER_S + 0.5)
    heartbeat(data)
    data.wait_for(lambda: {w["worker"]: w["state"] for w in data.get_json("/api/workers")["items"]}
                  == {"w-live": "online", "w-lost": "lost"})
    page.goto(data.base_url + "/workers")
    lost = page.locator("#lost-workers")
    assert "w-lost" in lost.inner_text() and "w-live" not in lost.inner_text()
    assert "stuck-1" in lost.inner_text() or "charge_card" in lost.inner_text()
    # The timeline arrives as its own fragment; a bar may stand for several jobs (data-n).
    page.wait_for_selector(".swimlane .bar")
    drawn = page.evaluate("Array.from(document.querySelectorAll('.swimlane .bar'))"
                          ".reduce((n, b) => n + Number(b.dataset.n || 1), 0)")
    assert drawn >= 8
    shoot(page, "workers")


def test_hostile_task_name_renders_as_text(data: Server, page: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(data.base_url + "/jobs?lib=arq")
    cell = page.locator("#job-rows .c-task a").first
    assert cell.inner_text() == EVIL
    page.goto(data.base_url + "/jobs/arq/api/evil-1")
    assert page.locator("h1").inner_text() == EVIL
    assert dialogs == []


def test_screenshots_of_every_page(data: Server, page: Any, browser: Any) -> None:
    for path, name in (("/", "overview"), ("/status", "status"), ("/jobs?state=failed", "jobs-failed")):
        page.goto(data.base_url + path)
        page.wait_for_load_state("networkidle") if False else page.wait_for_timeout(300)
        shoot(page, name)
    dark = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    try:
        pg = dark.new_page()
        for path, name in (("/", "overview-dark"), ("/jobs/dramatiq/billing/dead-1", "job-detail-dark"),
                           ("/workers", "workers-dark")):
            pg.goto(data.base_url + path)
            shoot(pg, name)
    finally:
        dark.close()
