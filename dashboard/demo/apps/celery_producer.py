"""The demo's Celery producer: a web app's worth of ``apply_async`` calls, a few a second."""

from __future__ import annotations

import collectors

from .celery_app import TASKS, app
from .pacing import Stop, calls, gap


def main() -> None:
    stop = Stop()
    try:
        for task, kwargs in calls():
            if stop:
                break
            TASKS[task].apply_async(kwargs=kwargs)
            stop.event.wait(gap())
    finally:
        app.close()
        collectors.shutdown_all()


if __name__ == "__main__":
    main()
