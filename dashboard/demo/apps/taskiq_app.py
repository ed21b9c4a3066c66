"""The demo's Taskiq app: ``taskiq worker flowerbed_demo_apps.taskiq_app:broker`` and
``taskiq scheduler flowerbed_demo_apps.taskiq_app:scheduler``; the producer imports the same broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq import SmartRetryMiddleware
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListRedisScheduleSource, RedisAsyncResultBackend, RedisStreamBroker

import collectors.taskiq

from . import workload as w
from .settings import PERIOD_S, REDIS_URL, key

# consumer_id="0": the group reads what producers sent before the first worker created it.
broker = RedisStreamBroker(
    REDIS_URL, queue_name=key("taskiq"), consumer_group_name=key("taskiq", "group"), consumer_id="0",
).with_result_backend(RedisAsyncResultBackend(REDIS_URL, prefix_str=key("taskiq", "result"), result_ex_time=60))
# Taskiq itself ignores a retry's ``delay`` label: a delayed retry is a one-off schedule in a source
# that `taskiq scheduler` polls, which is how production apps get backoff.
retries = ListRedisScheduleSource(REDIS_URL, prefix=key("taskiq", "retries"))
broker.add_middlewares(
    SmartRetryMiddleware(default_retry_count=3, default_delay=1.0, use_jitter=True, schedule_source=retries),
    collectors.taskiq.Collector(),
)

scheduler = collectors.taskiq.InstrumentedScheduler(broker, sources=[LabelScheduleSource(broker), retries])


async def _busy(task: str) -> None:
    await asyncio.sleep(w.work_seconds(task))


@broker.task(task_name="send_welcome_email")
async def send_welcome_email(user_id: int, email: str, locale: str = "en") -> dict[str, Any]:
    await _busy("send_welcome_email")
    return {"user_id": user_id, "sent_to": email, "template": f"welcome.{locale}"}


@broker.task(task_name="resize_image")
async def resize_image(image_id: str, sizes: list[int]) -> list[str]:
    await _busy("resize_image")
    return [f"{image_id}_{s}.webp" for s in sizes]


@broker.task(task_name="call_webhook")
async def call_webhook(url: str, event: str, api_token: str) -> int:
    await _busy("call_webhook")
    return 200


@broker.task(task_name="generate_report")
async def generate_report(account_id: int, month: str, format: str = "pdf") -> str:
    await _busy("generate_report")
    return f"reports/{account_id}/{month}.{format}"


@broker.task(task_name="sync_inventory", retry_on_error=True, max_retries=w.FLAKY_RETRIES + 1)
async def sync_inventory(batch_id: str, sku: str, warehouse: str) -> dict[str, Any]:
    await _busy("sync_inventory")
    return w.sync_inventory(batch_id, sku, warehouse)


@broker.task(task_name="charge_card", retry_on_error=True, max_retries=w.CHARGE_RETRIES + 1)
async def charge_card(order_id: str, amount_cents: int, currency: str, customer_id: str) -> dict[str, Any]:
    await _busy("charge_card")
    return w.charge_card(order_id, amount_cents, currency, customer_id)


@broker.task(task_name="import_csv")
async def import_csv(path: str, account_id: int) -> None:
    await _busy("import_csv")
    w.import_csv(path, account_id)


@broker.task(task_name="refresh_exchange_rates",
             schedule=[{"interval": PERIOD_S, "schedule_id": "refresh_exchange_rates"}])
async def refresh_exchange_rates() -> dict[str, float]:
    await _busy("refresh_exchange_rates")
    return w.refresh_exchange_rates()


TASKS = {t.task_name: t for t in (send_welcome_email, resize_image, call_webhook, generate_report,
                                  sync_inventory, charge_card, import_csv)}
