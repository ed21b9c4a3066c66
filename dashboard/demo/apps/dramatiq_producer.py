"""The demo's Dramatiq producer: a web app's worth of ``actor.send`` calls, a few a second."""

from __future__ import annotations

import collectors

from .dramatiq_app import broker
from .pacing import Stop, calls, gap


def main() -> None:
    stop = Stop()
    try:
        for task, kwargs in calls():
            if stop:
                break
            broker.get_actor(task).send_with_options(kwargs=kwargs)
            stop.event.wait(gap())
    finally:
        broker.close()
        collectors.shutdown_all()


if __name__ == "__main__":
    main()
