"""Route-test fixtures: a seeded SQLite file and an in-process app (TestClient) over it."""

from __future__ import annotations

import sqlite3
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient wants httpx2 when only httpx is installed; both work here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dashboard.app import create_app
from dashboard.bench.pages_seed import seed
from dashboard.config import Settings
from dashboard.store.keys import job_key
from tests.conftest import REDIS_URL

#: A task name a hostile worker could send; pages must show it as text.
EVIL_TASK = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with 3,000 jobs over the last hour, two lost workers, quarantine, and one hostile job."""
    path = tmp_path_factory.mktemp("web") / "pages.db"
    now = time.time()
    info = seed(str(path), 3000, span_s=3600, now=now - 5)
    db = sqlite3.connect(path)
    next_id = db.execute("SELECT max(id) + 1 FROM jobs").fetchone()[0]
    db.execute(
        "INSERT INTO jobs (id, jk, lib, app, job_id, task, queue, state, ver, created_at, updated_at, attempt, "
        "exc_type, exc_message, args, veid) VALUES (?, ?, 'arq', 'api', 'evil-1', ?, 'default', 'failed', 1, ?, ?, 1, "
        "?, ?, ?, 0)",
        (next_id, job_key("arq", "api", "evil-1"), EVIL_TASK, now - 1, now - 1, "<img src=x onerror=alert(1)>",
         "<b>bold</b>", '{"html": "<script>alert(2)</script>"}'),
    )
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs_fts'").fetchone():
        db.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")  # as ingest would index it
    db.commit()
    db.close()
    return {"path": path, "url": f"sqlite:///{path}", "now": now, **info}


@pytest.fixture
def client(seeded: dict[str, Any]) -> Iterator[TestClient]:
    """The real app over the seeded file (lost after 300 s, so the two 10-minute-silent workers are lost)."""
    settings = Settings(database_url=seeded["url"], redis_url=REDIS_URL, stream=f"fbtest:{uuid.uuid4().hex}",
                        lost_after_s=300.0)
    with TestClient(create_app(settings)) as c:
        yield c


def htmx(target: str | None = None) -> dict[str, str]:
    """Headers of an htmx request (optionally aimed at an element id)."""
    headers = {"HX-Request": "true"}
    if target:
        headers["HX-Target"] = target
    return headers


def db_path(seeded: dict[str, Any]) -> Path:
    return Path(seeded["path"])
