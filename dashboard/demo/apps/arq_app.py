"""The demo's arq app: ``arq flowerbed_demo_apps.arq_app.WorkerSettings`` runs the worker and its cron.

arq retries only on ``Retry``: the flaky and declined jobs raise it while tries remain and raise the
real exception on their last try, so the final failure in the DLQ names what went wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import Retry, func

import collectors.arq

from . import workload as w
from .settings import PERIOD_S, REDIS_URL, key

QUEUE = key("arq")


async def _busy(task: str) -> None:
    await asyncio.sleep(w.work_seconds(task))


async def send_welcome_email(ctx: dict[str, Any], user_id: int, email: str, locale: str = "en") -> dict[str, Any]:
    await _busy("send_welcome_email")
    return {"user_id": user_id, "sent_to": email, "template": f"welcome.{locale}"}


async def resize_image(ctx: dict[str, Any], image_id: str, sizes: list[int]) -> list[str]:
    await _busy("resize_image")
    return [f"{image_id}_{s}.webp" for s in sizes]


async def call_webhook(ctx: dict[str, Any], url: str, event: str, api_token: str) -> int:
    await _busy("call_webhook")
    return 200


async def generate_report(ctx: dict[str, Any], account_id: int, month: str, format: str = "pdf") -> str:
    await _busy("generate_report")
    return f"reports/{account_id}/{month}.{format}"


async def sync_inventory(ctx: dict[str, Any], batch_id: str, sku: str, warehouse: str) -> dict[str, Any]:
    await _busy("sync_inventory")
    try:
        return w.sync_inventory(batch_id, sku, warehouse)
    except w.UpstreamTimeout:
        if ctx["job_try"] <= w.FLAKY_RETRIES:
            raise Retry(defer=ctx["job_try"]) from None
        raise


async def charge_card(ctx: dict[str, Any], order_id: str, amount_cents: int, currency: str,
                      customer_id: str) -> dict[str, Any]:
    await _busy("charge_card")
    try:
        return w.charge_card(order_id, amount_cents, currency, customer_id)
    except w.PaymentDeclined:
        if ctx["job_try"] <= w.CHARGE_RETRIES:
            raise Retry(defer=1) from None
        raise


async def import_csv(ctx: dict[str, Any], path: str, account_id: int) -> None:
    await _busy("import_csv")
    w.import_csv(path, account_id)


async def refresh_exchange_rates(ctx: dict[str, Any]) -> dict[str, float]:
    await _busy("refresh_exchange_rates")
    return w.refresh_exchange_rates()


class Settings:
    functions = [
        send_welcome_email, resize_image, call_webhook, generate_report, import_csv,
        func(sync_inventory, max_tries=w.FLAKY_RETRIES + 1),
        func(charge_card, max_tries=w.CHARGE_RETRIES + 1),
    ]
    cron_jobs = [
        cron(refresh_exchange_rates, name="refresh_exchange_rates", second=set(range(0, 60, PERIOD_S)),
             microsecond=0),
    ]
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = 10
    keep_result = 60
    poll_delay = 0.2
    job_completion_wait = 6  # let a slow report finish on Ctrl-C rather than cancel it


WorkerSettings = collectors.arq.instrument(Settings)
