"""Producer for the Dramatiq collector tests: ``python -m tests.collectors.apps.dramatiq_client CMD JSON``.

``send [[actor, args, kwargs, options], …]`` prints one message id per line; ``requeue PAYLOAD``
enqueues a dead message again from a ``job-failed`` payload, as a live worker would; ``dlq`` prints
the message ids in the queue's dead-letter queue; ``cleanup`` deletes the test's queues.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from dramatiq import Message

import collectors

from .dramatiq_app import BROKER, QUEUE, broker

_ATTEMPT_OPTIONS = ("retries", "traceback", "redis_message_id", "eta", "requeue_timestamp")


def main(cmd: str, arg: str) -> None:
    if cmd == "send":
        for actor_name, args, kwargs, options in json.loads(arg):
            message = broker.get_actor(actor_name).send_with_options(args=args, kwargs=kwargs, **options)
            print(message.message_id, flush=True)
    elif cmd == "requeue":
        payload = json.loads(arg)
        message = Message(**{**payload, "args": tuple(payload["args"])})
        options = {k: v for k, v in message.options.items() if k not in _ATTEMPT_OPTIONS}
        broker.enqueue(dataclasses.replace(message, options=options))
    elif cmd == "dlq":
        if BROKER == "redis":
            for raw in broker.client.hvals(f"{broker.namespace}:{QUEUE}.XQ.msgs"):
                print(Message.decode(raw).message_id)
        else:
            channel = broker.channel
            while True:
                method, _, body = channel.basic_get(f"{QUEUE}.XQ", auto_ack=False)
                if method is None:
                    break
                print(Message.decode(body).message_id)
    elif cmd == "cleanup" and BROKER == "rabbitmq":
        for name in (QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ"):
            broker.channel.queue_delete(name)
    broker.close()
    collectors.shutdown_all()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
