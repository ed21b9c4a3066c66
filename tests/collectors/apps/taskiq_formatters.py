"""Runs one job per kind of broker formatter through an in-memory Taskiq broker with the collector.

The collector begins each attempt in the formatter's ``loads`` (see ``collectors.taskiq._instrument``):
the default formatter keeps its identity and type, and one whose class cannot be swapped (here a
``SimpleNamespace``, a built-in type, here set after the collector was added) is wrapped. Prints, per kind, the job id and what the broker's
formatter became.
"""

from __future__ import annotations

import asyncio
import json
import types

from taskiq import InMemoryBroker
from taskiq.formatters.proxy_formatter import ProxyFormatter

import collectors.taskiq


async def run(kind: str) -> dict[str, object]:
    broker = InMemoryBroker()
    collector = collectors.taskiq.Collector()
    broker.add_middlewares(collector)
    original = broker.formatter
    if kind == "namespace":  # set after the collector was added: its startup instruments it
        inner = ProxyFormatter(broker)
        original = broker.formatter = types.SimpleNamespace(dumps=inner.dumps, loads=inner.loads, broker=broker)

    @broker.task(task_name=f"formatters.{kind}")
    async def job(x: int) -> int:
        return x + 1

    await broker.startup()
    sent = await job.kiq(41)
    result = await sent.wait_result(timeout=5)
    await broker.shutdown()
    collector.recorder.emitter.flush(5.0)
    formatter = broker.formatter
    return {"job_id": sent.task_id, "result": result.return_value, "same": formatter is original,
            "is_proxy": isinstance(formatter, ProxyFormatter), "reads_through": formatter.broker is broker}


async def main() -> None:
    print(json.dumps({kind: await run(kind) for kind in ("proxy", "namespace")}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
