"""A producer-only process for the Celery tests: sends the jobs named on the command line, prints ids."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

from tests.collectors.apps import celery_app as m


def main(names: list[str]) -> None:
    ids: dict[str, str] = {}
    for name in names:
        if name.startswith("revoke:"):
            job_id = name.split(":", 1)[1]
            m.app.control.revoke(job_id, terminate=True)
            ids[name] = job_id
            continue
        if name == "expired":
            ids[name] = m.ok.apply_async((1,), expires=datetime.now(timezone.utc) - timedelta(seconds=10)).id
            continue
        if name == "countdown":
            ids[name] = m.ok.apply_async((3,), countdown=30).id
            continue
        task = getattr(m, name)
        args = {"ok": (21,), "flaky": ("flaky",), "sleepy": (30,)}.get(name, ())
        kwargs = {"password": "hunter2"} if name == "ok" else {}
        ids[name] = task.apply_async(args, kwargs).id
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
