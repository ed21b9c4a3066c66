"""A producer-only process for the Taskiq tests: sends the jobs named on the command line, prints ids."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.collectors.apps import taskiq_app as app


async def main(names: list[str]) -> None:
    await app.broker.startup()
    ids: dict[str, str] = {}
    for name in names:
        if name == "redis-schedule":
            await app.redis_source.startup()
            created = await app.from_redis_source.kicker().with_schedule_id(
                f"{app.PREFIX}-redis"
            ).schedule_by_interval(app.redis_source, app.SCHEDULE_EVERY)
            ids[name] = created.schedule_id
            continue
        task = getattr(app, name)
        args: tuple = (21,) if name in ("ok", "ok_sync") else ((name,) if name == "flaky" else ())
        kwargs = {"password": "hunter2"} if name == "ok_sync" else {}
        sent = await task.kiq(*args, **kwargs)
        ids[name] = sent.task_id
    await app.broker.shutdown()
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
