"""Free-text job search (`/api/jobs?q=…`) on a real `flowerbed serve`, over SQLite FTS5 and PostgreSQL."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.events import build
from tests.conftest import publish
from tests.integration.test_ingest import pg_database

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/search-{uuid.uuid4().hex[:8]}.db"
    else:
        with pg_database() as url:
            yield url


def _job(job_id: str, t0: float, *, args: tuple[Any, ...] = (1,), failures: tuple[tuple[str, str], ...] = (),
         task: str = "tasks.send_email", done: bool = True) -> list[dict[str, Any]]:
    """A job's events: enqueued, then one failed attempt per ``failures`` entry, then success (if ``done``)."""
    common: dict[str, Any] = {"job_id": job_id, "task": task, "queue": "default", "max_attempts": 5}
    evs = [build("job-enqueued", "celery", "shop", ts=t0, attempt=1, args_raw=args, **common)]
    attempt = 1
    for attempt, (exc_type, message) in enumerate(failures, start=1):
        evs.append(build("job-started", "celery", "shop", ts=t0 + attempt, attempt=attempt, worker="w1", **common))
        evs.append(build("job-failed", "celery", "shop", ts=t0 + attempt + 0.5, attempt=attempt, worker="w1",
                         exc_type=exc_type, exc_message=message, final=False, retry_in_s=1.0, **common))
        attempt += 1
    if done:
        evs.append(build("job-started", "celery", "shop", ts=t0 + 10, attempt=attempt, worker="w1", **common))
        evs.append(build("job-succeeded", "celery", "shop", ts=t0 + 11, attempt=attempt, worker="w1",
                         duration_ms=5.0, **common))
    return evs


def _ids(server: Any, q: str) -> set[str]:
    page = server.get_json("/api/jobs?limit=500&q=" + urllib.parse.quote(q))
    return {j["job_id"] for j in page["items"]}


def test_search_finds_exactly_the_jobs_with_a_rare_word(
    flowerbed_server: Callable[..., Any], stream_name: str, database_url: str
) -> None:
    t0 = time.time() - 600
    events: list[dict[str, Any]] = []
    for i in range(40):  # filler: common words everywhere
        events += _job(f"fill-{i}", t0 + i, args=("hello", i), failures=(("TimeoutError", "upstream timed out"),))
    events += _job("args-hit", t0 + 50, args=("Zebracorn-42", {"city": "Oslo"}))
    events += _job("exc-hit", t0 + 51, failures=(("QuokkaError", "the quokka exploded in aisle 7"),))
    events += _job("both-hit", t0 + 52, args=("quokka",), task="tasks.resize_image")
    # Attempt 1 fails with one message; attempt 2's failure arrives later, in another batch.
    events += _job("changing", t0 + 53, failures=(("ValueError", "walrus overflow"),), done=False)
    publish(stream_name, events)

    server = flowerbed_server(stream_name, database_url=database_url)
    server.wait_for(lambda: len(server.get_json("/api/jobs?limit=500")["items"]) == 44)

    assert _ids(server, "zebracorn") == {"args-hit"}
    assert _ids(server, "Zebracorn-42") == {"args-hit"}  # several words: all must match
    assert _ids(server, "zebrac") == {"args-hit"}  # a word prefix
    assert _ids(server, "oslo") == {"args-hit"}
    assert _ids(server, "quokka") == {"exc-hit", "both-hit"}
    assert _ids(server, "exc:quokka") == {"exc-hit"}
    assert _ids(server, "args:quokka") == {"both-hit"}
    assert _ids(server, "QuokkaError") == {"exc-hit"}
    assert _ids(server, "quokka state:succeeded") == {"exc-hit", "both-hit"}
    assert _ids(server, "quokka task:tasks.resize_image") == {"both-hit"}
    assert _ids(server, "resize") == {"both-hit"}  # the task name is indexed too
    assert _ids(server, "walrus") == {"changing"}
    assert _ids(server, "nosuchwordanywhere") == set()
    assert _ids(server, "changing") == {"changing"}  # job ids are indexed too
    assert _ids(server, "args-hit") == {"args-hit", "exc-hit", "both-hit"}  # "args"* and "hit"*: in ids and args
    assert len(_ids(server, "timed out")) == 40

    # The job fails again with another message: the index follows (old words out, new ones in).
    later = [build("job-started", "celery", "shop", ts=t0 + 60, attempt=2, worker="w1", job_id="changing",
                   task="tasks.send_email"),
             build("job-failed", "celery", "shop", ts=t0 + 61, attempt=2, worker="w1", job_id="changing",
                   task="tasks.send_email", exc_type="KeyError", exc_message="narwhal missing", final=True)]
    publish(stream_name, later)
    server.wait_for(lambda: server.get_json("/api/jobs?q=id:changing")["items"][0]["state"] == "failed")
    assert _ids(server, "narwhal") == {"changing"}
    assert _ids(server, "walrus") == set()
    assert _ids(server, "exc:keyerror") == {"changing"}
    assert server.stop() == 0
