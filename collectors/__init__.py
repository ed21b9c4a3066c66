"""Flowerbed collectors: send job, worker and schedule events from arq, Dramatiq, Taskiq and Celery.

Runs inside workers and producers, so it imports only the standard library and redis-py (4.2–8.x).
Each library's module (``collectors.arq``, ``collectors.dramatiq``, ``collectors.taskiq``,
``collectors.celery``) imports its library lazily and installs in one line.
"""

from __future__ import annotations

from .config import CollectorConfig
from .constants import PROTOCOL_VERSION
from .emitter import Emitter, get_emitter, shutdown_all
from .events import EventType, InvalidEvent, Redactor, build, decode, encode, validate

__all__ = [
    "CollectorConfig",
    "Emitter",
    "EventType",
    "InvalidEvent",
    "PROTOCOL_VERSION",
    "Redactor",
    "build",
    "decode",
    "encode",
    "get_emitter",
    "shutdown_all",
    "validate",
]
