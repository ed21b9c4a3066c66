"""A Dramatiq worker (StubBroker, real Worker threads) whose successes are reported at
after_process_message, and whose other outcomes wait for their ack or nack.

Run by tests/collectors/test_dramatiq.py in the Dramatiq environment; it prints one JSON line: the
message ids, and whether the collector's ``after_ack`` was its class's no-op after each phase.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

import collectors.dramatiq
from collectors.emitter import shutdown_all


class FailsOkMessages(Middleware):
    """Fails the messages of ``vetoed`` after they ran: they are nacked (dead-lettered), not acked.

    Added after the collector, so its after_process_message runs before the collector's.
    """

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if message.actor_name == "vetoed":
            message.fail()


def main() -> None:
    broker = StubBroker(fail_fast_default=False)  # dead letters are expected here
    collector = collectors.dramatiq.Collector(app="dqsettle")
    broker.add_middleware(collector)
    broker.add_middleware(FailsOkMessages())
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=0)
    def fine(n: int) -> int:
        return n

    @dramatiq.actor(max_retries=0)
    def broken(n: int) -> None:
        raise ValueError(f"broken {n}")

    @dramatiq.actor(max_retries=0)
    def vetoed(n: int) -> None:
        return None

    def fast_path() -> bool:
        return "after_ack" not in vars(collector)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()

    def run(actor: Any, *ns: int) -> list[str]:
        """Send one message per ``n`` and wait until the worker has settled them all."""
        ids = [actor.send(n).message_id for n in ns]
        broker.join(actor.queue_name)
        worker.join()
        return ids

    seen: dict[str, Any] = {}
    try:
        seen["fine"] = run(fine, 0, 1, 2)
        seen["fast_after_successes"] = fast_path()
        [seen["broken"]] = run(broken, 7)
        seen["fast_after_a_failure"] = fast_path()
        [seen["vetoed"]] = run(vetoed, 8)
        seen["fast_after_a_veto"] = fast_path()
        [seen["after"]] = run(fine, 9)
        seen["dead"] = sorted(m.message_id for m in broker.dead_letters)
    finally:
        worker.stop()
        shutdown_all()
    sys.stdout.write(json.dumps(seen) + "\n")


if __name__ == "__main__":
    main()
