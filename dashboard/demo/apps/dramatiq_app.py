"""The demo's Dramatiq app (Redis broker) and its periodiq schedule.

``dramatiq flowerbed_demo_apps.dramatiq_app`` runs the worker, ``periodiq flowerbed_demo_apps.dramatiq_app``
the scheduler; the producer imports the same broker. periodiq's cron cannot fire more than once a minute.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from periodiq import PeriodiqMiddleware, cron

import collectors.dramatiq

from . import workload as w
from .settings import REDIS_URL, key

broker = RedisBroker(url=REDIS_URL, namespace=key("dramatiq"))
broker.add_middleware(PeriodiqMiddleware(skip_delay=30))
broker.add_middleware(collectors.dramatiq.Collector())
dramatiq.set_broker(broker)

#: Short backoffs, so a retry shows up seconds (not minutes) after the failure.
RETRY = {"min_backoff": 1000, "max_backoff": 3000}


def _busy(task: str) -> None:
    time.sleep(w.work_seconds(task))


@dramatiq.actor(max_retries=3, **RETRY)
def send_welcome_email(user_id: int, email: str, locale: str = "en") -> dict[str, Any]:
    _busy("send_welcome_email")
    return {"user_id": user_id, "sent_to": email, "template": f"welcome.{locale}"}


@dramatiq.actor(max_retries=3, **RETRY)
def resize_image(image_id: str, sizes: list[int]) -> list[str]:
    _busy("resize_image")
    return [f"{image_id}_{s}.webp" for s in sizes]


@dramatiq.actor(max_retries=3, **RETRY)
def call_webhook(url: str, event: str, api_token: str) -> int:
    _busy("call_webhook")
    return 200


@dramatiq.actor(max_retries=3, **RETRY)
def generate_report(account_id: int, month: str, format: str = "pdf") -> str:
    _busy("generate_report")
    return f"reports/{account_id}/{month}.{format}"


@dramatiq.actor(max_retries=w.FLAKY_RETRIES, **RETRY)
def sync_inventory(batch_id: str, sku: str, warehouse: str) -> dict[str, Any]:
    _busy("sync_inventory")
    return w.sync_inventory(batch_id, sku, warehouse)


@dramatiq.actor(max_retries=w.CHARGE_RETRIES, **RETRY)
def charge_card(order_id: str, amount_cents: int, currency: str, customer_id: str) -> dict[str, Any]:
    _busy("charge_card")
    return w.charge_card(order_id, amount_cents, currency, customer_id)


@dramatiq.actor(max_retries=0)
def import_csv(path: str, account_id: int) -> None:
    _busy("import_csv")
    w.import_csv(path, account_id)


@dramatiq.actor(periodic=cron("* * * * *"), max_retries=0)
def refresh_exchange_rates() -> dict[str, float]:
    _busy("refresh_exchange_rates")
    return w.refresh_exchange_rates()
