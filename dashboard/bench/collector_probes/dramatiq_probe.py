"""Dramatiq probe: a worker thread's middleware chain for a message on a StubBroker, and ``dramatiq`` on Redis.

Also the worker's broker module (``dramatiq dramatiq_probe``), with a namespace from ``FB_BENCH_PREFIX``.
The in-process path is ``_WorkerThread.process_message`` (before/after_process_message around the
actor) followed by the consumer's ack (before/after_ack), exactly as a worker thread runs a message.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import dramatiq
from _common import (
    REDIS_URL,
    clocked,
    drain_emitters,
    interleaved,
    mark,
    output,
    prefix,
    probe_main,
    with_collector,
)
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

QUEUE = "fbbench"

if __name__ != "__main__":  # the worker's (and the filler's) broker module
    broker = RedisBroker(url=REDIS_URL, namespace=f"{prefix()}:dq")
    if with_collector():
        import collectors.dramatiq

        broker.add_middleware(collectors.dramatiq.Collector())
    if os.environ.get("FB_BENCH_DRAMATIQ_PROMETHEUS") == "1":  # Dramatiq's own metrics middleware
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus())
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", queue_name=QUEUE, max_retries=0)
    def noop(i: int) -> None:
        return None

    @dramatiq.actor(actor_name="mark", queue_name=QUEUE, max_retries=0)
    def mark_actor(name: str) -> None:
        mark(name)


def _fill(jobs: int, warmup: int) -> None:
    messages = [noop.message(i) for i in range(warmup)]
    messages.append(mark_actor.message("start"))
    messages.extend(noop.message(i) for i in range(jobs))
    messages.append(mark_actor.message("end"))
    for m in messages:
        broker.enqueue(m)


def _build(pre: str, env: dict[str, str], jobs: int, warmup: int) -> tuple[list[str], Any]:
    dramatiq_bin = os.path.join(os.path.dirname(sys.executable), "dramatiq")
    # One worker thread by default (a no-op job's whole cost in one thread); FB_BENCH_DRAMATIQ_THREADS=8
    # runs Dramatiq's default. Either way its Redis broker, not the CPU, sets the pace.
    threads = os.environ.get("FB_BENCH_DRAMATIQ_THREADS", "1")
    cmd = [dramatiq_bin, "dramatiq_probe", "--processes", "1", "--threads", threads, "--queues", QUEUE]
    if os.environ.get("FB_BENCH_DRAMATIQ_PROMETHEUS") == "1":
        # Its metrics files in a directory of this run's (the filler's import makes it too), removed
        # after it; its exposition server (a process the dramatiq command forks) on a free loopback port.
        import atexit
        import shutil
        import tempfile

        db = tempfile.mkdtemp(prefix=f"{pre}-prometheus-")
        atexit.register(shutil.rmtree, db, True)
        settings = {"dramatiq_prom_db": db, "dramatiq_prom_host": "127.0.0.1", "dramatiq_prom_port": "0"}
        env.update(settings)
        os.environ.update(settings)
    # This file runs as __main__, built before the run's prefix was set: the app is imported afresh.
    import dramatiq_probe as app_module

    return cmd, lambda: app_module._fill(jobs, warmup)


class _Consumer:
    """The ack half of a ConsumerThread, against a consumer that has nothing to ack on a stub."""

    def __init__(self, broker: Any) -> None:
        from dramatiq.worker import ConsumerThread

        self.thread = ConsumerThread.__new__(ConsumerThread)
        self.thread.broker = broker
        self.thread.logger = ConsumerThread.__init__.__globals__["get_logger"]("bench", "consumer")
        self.thread.consumer = self
        self.post_process_message = self.thread.post_process_message

    def ack(self, message: Any) -> None:
        pass

    def nack(self, message: Any) -> None:
        pass


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    from dramatiq.broker import MessageProxy
    from dramatiq.worker import _WorkerThread

    import collectors.dramatiq

    class _NoWork:
        def task_done(self) -> None:
            pass

    class _Floor(dramatiq.Middleware):
        """Hooks that do nothing where the collector has its own: what Dramatiq's dispatch to any
        middleware hooked in like it costs a message."""

        def before_process_message(self, broker: Any, message: Any) -> None:
            pass

        def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                                  exception: BaseException | None = None) -> None:
            pass

        before_ack = after_ack = staticmethod(collectors.dramatiq.Collector.after_ack)

    def setup(middleware: Any) -> Any:
        stub = StubBroker()
        if middleware is not None:
            stub.add_middleware(middleware)
        stub.emit_after("process_boot")

        def fn(i: int) -> None:
            return None

        actor = dramatiq.actor(fn, actor_name="noop", queue_name=QUEUE, broker=stub, max_retries=0)
        stub.declare_queue(QUEUE)
        thread = _WorkerThread(broker=stub, consumers={QUEUE: _Consumer(stub)}, work_queue=_NoWork(),
                               worker_timeout=1000)
        process = thread.process_message

        def run(n: int) -> tuple[float, float]:
            messages = [MessageProxy(actor.message(i)) for i in range(n)]
            drain_emitters()
            return clocked(lambda: [process(m) for m in messages])

        return run

    runs = {"without": setup(None), "floor": setup(_Floor()), "with": setup(collectors.dramatiq.Collector())}
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(runs["with"], jobs)
        pstats.Stats(prof, stream=sys.stderr).sort_stats(os.environ.get("FB_SORT", "tottime")).print_stats(25)
        return
    result = interleaved(runs, jobs, repeat)
    result["path"] = ("_WorkerThread.process_message on a StubBroker with the default middleware: "
                      "before/after_process_message, before/after_ack")
    output(result)


def main(argv: list[str]) -> int:
    return probe_main("dramatiq", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
