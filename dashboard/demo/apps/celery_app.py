"""The demo's Celery app: ``celery -A flowerbed_demo_apps.celery_app:app worker`` and ``… beat``.

Every broker and result key carries the demo's prefix (kombu's ``global_keyprefix``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

import collectors.celery

from . import workload as w
from .settings import PERIOD_S, REDIS_URL, key

app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": key("celery") + ":"},
    result_backend_transport_options={"global_keyprefix": key("celery") + ":"},
    result_expires=60,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "refresh_exchange_rates": {"task": "refresh_exchange_rates", "schedule": float(PERIOD_S)},
    },
    beat_schedule_filename=os.path.join(os.getcwd(), "celery-beat-schedule"),
)
collectors.celery.install(app)

#: Short retry delays, so a retry shows up seconds after the failure.
RETRY_DELAY_S = 1


def _busy(task: str) -> None:
    time.sleep(w.work_seconds(task))


@app.task(name="send_welcome_email")
def send_welcome_email(user_id: int, email: str, locale: str = "en") -> dict[str, Any]:
    _busy("send_welcome_email")
    return {"user_id": user_id, "sent_to": email, "template": f"welcome.{locale}"}


@app.task(name="resize_image")
def resize_image(image_id: str, sizes: list[int]) -> list[str]:
    _busy("resize_image")
    return [f"{image_id}_{s}.webp" for s in sizes]


@app.task(name="call_webhook")
def call_webhook(url: str, event: str, api_token: str) -> int:
    _busy("call_webhook")
    return 200


@app.task(name="generate_report")
def generate_report(account_id: int, month: str, format: str = "pdf") -> str:
    _busy("generate_report")
    return f"reports/{account_id}/{month}.{format}"


@app.task(name="sync_inventory", autoretry_for=(w.UpstreamTimeout,), max_retries=w.FLAKY_RETRIES,
          default_retry_delay=RETRY_DELAY_S)
def sync_inventory(batch_id: str, sku: str, warehouse: str) -> dict[str, Any]:
    _busy("sync_inventory")
    return w.sync_inventory(batch_id, sku, warehouse)


@app.task(name="charge_card", autoretry_for=(w.PaymentDeclined,), max_retries=w.CHARGE_RETRIES,
          default_retry_delay=RETRY_DELAY_S)
def charge_card(order_id: str, amount_cents: int, currency: str, customer_id: str) -> dict[str, Any]:
    _busy("charge_card")
    return w.charge_card(order_id, amount_cents, currency, customer_id)


@app.task(name="import_csv")
def import_csv(path: str, account_id: int) -> None:
    _busy("import_csv")
    w.import_csv(path, account_id)


@app.task(name="refresh_exchange_rates")
def refresh_exchange_rates() -> dict[str, float]:
    _busy("refresh_exchange_rates")
    return w.refresh_exchange_rates()


TASKS = {t.name: t for t in (send_welcome_email, resize_image, call_webhook, generate_report,
                             sync_inventory, charge_card, import_csv)}
