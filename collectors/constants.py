"""Names shared by the collectors and the dashboard: stream keys, env variables, limits.

Every Redis key Flowerbed touches is named here, so a reader can see the whole footprint at once.
"""

from __future__ import annotations

#: Version of the event protocol this package writes and accepts.
PROTOCOL_VERSION = 1

#: The stream-entry field that holds one event as JSON.
EVENT_FIELD = "e"

#: The stream-entry field that holds many job events of one sender as JSON rows (see ``events.ROW_COLS``).
ROWS_FIELD = "b"

#: Default stream the collectors write and the dashboard reads.
DEFAULT_STREAM = "flowerbed:events"

#: Default stream the dashboard writes actions to and live workers read.
DEFAULT_CONTROL_STREAM = "flowerbed:control"

#: Consumer group the dashboard processes share.
CONSUMER_GROUP = "flowerbed"

#: Default Redis URL when neither an option nor FLOWERBED_REDIS_URL is given.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

#: Approximate cap on the stream length (XADD MAXLEN ~); 0 means never trim.
DEFAULT_STREAM_MAXLEN = 1_000_000

#: Entries larger than this are quarantined by the dashboard, and never sent by a collector.
MAX_EVENT_BYTES = 256 * 1024

#: A final failure's payload (what is needed to enqueue the job again) is dropped past this size.
DEFAULT_PAYLOAD_LIMIT = 64 * 1024

#: Argument previews are cut to this many characters.
DEFAULT_ARGS_LIMIT = 2048

#: Tracebacks are cut to this many characters (the end is kept: it names the failing line).
DEFAULT_TRACEBACK_LIMIT = 16 * 1024

#: Exception messages are cut to this many characters.
DEFAULT_MESSAGE_LIMIT = 2048

#: Argument keys whose values never leave the worker (matched case-insensitively, as substrings).
DEFAULT_REDACT = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "auth",
    "cookie",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "session",
    "signature",
)

#: What replaces a redacted value.
REDACTED = "[redacted]"

#: Seconds between worker heartbeats.
HEARTBEAT_INTERVAL_S = 5.0

# Environment variables the collectors read (the dashboard reads the same names).
ENV_APP = "FLOWERBED_APP"
ENV_REDIS_URL = "FLOWERBED_REDIS_URL"
ENV_STREAM = "FLOWERBED_STREAM"
ENV_STREAM_MAXLEN = "FLOWERBED_STREAM_MAXLEN"
ENV_CAPTURE_ARGS = "FLOWERBED_CAPTURE_ARGS"
ENV_REDACT = "FLOWERBED_REDACT"
ENV_DISABLED = "FLOWERBED_DISABLED"
