"""The sample workload the four demo apps share: what each job does, and the mix producers enqueue.

Jobs are plain functions of their arguments (the library modules only add sleeping and retry policy),
so every library shows the same shop: fast jobs, a slow report, a flaky upstream that succeeds on a
retry, a card that is always declined (retries exhausted, to the DLQ), a CSV import that fails with no
retry, and a periodic exchange-rate refresh.
"""

from __future__ import annotations

import random
import uuid
import zlib
from typing import Any

import redis

from .settings import REDIS_URL, key

__all__ = [
    "CHARGE_RETRIES", "FLAKY_RETRIES", "PaymentDeclined", "UpstreamTimeout", "charge_card", "first_round", "import_csv",
    "next_call", "refresh_exchange_rates", "sync_inventory", "work_seconds",
]

#: Retries allowed to the flaky job; it fails once or twice, so it always succeeds within them.
FLAKY_RETRIES = 3

#: Retries allowed to a card charge before it lands in the DLQ.
CHARGE_RETRIES = 2

_redis = redis.Redis.from_url(REDIS_URL)


class UpstreamTimeout(ConnectionError):
    """The warehouse API did not answer in time (transient: a retry succeeds)."""


class PaymentDeclined(Exception):
    """The card was declined (permanent: every attempt fails the same way)."""


def work_seconds(task: str) -> float:
    """How long one run of ``task`` keeps its worker busy."""
    if task == "generate_report":
        return random.uniform(2.0, 5.0)
    if task in ("resize_image", "charge_card", "sync_inventory"):
        return random.uniform(0.05, 0.3)
    return random.uniform(0.01, 0.08)


def sync_inventory(batch_id: str, sku: str, warehouse: str) -> dict[str, Any]:
    """Fail the first one or two attempts of a batch (counted in Redis), then report the stock level."""
    counter = key("flaky", batch_id)
    attempt = int(_redis.incr(counter))
    _redis.expire(counter, 600)
    if attempt <= 1 + zlib.crc32(batch_id.encode()) % 2:
        raise UpstreamTimeout(f"warehouse {warehouse} API timed out after 5.0 s")
    _redis.delete(counter)
    return {"sku": sku, "warehouse": warehouse, "on_hand": random.randint(0, 400)}


def charge_card(order_id: str, amount_cents: int, currency: str, customer_id: str) -> dict[str, Any]:
    """Charge a customer; a few customers' cards are always declined."""
    if customer_id.endswith(("7", "3")):
        raise PaymentDeclined("card declined: insufficient_funds")
    return {"order_id": order_id, "charged": amount_cents, "currency": currency, "status": "paid"}


def import_csv(path: str, account_id: int) -> None:
    """Always fails: the demo's job with no retry policy."""
    raise ValueError(f"{path}: row 17: invalid date '2026-02-30' in column 'signup_date'")


def refresh_exchange_rates() -> dict[str, float]:
    """The periodic job of every library."""
    return {"EUR": 1.0, "USD": round(random.uniform(1.05, 1.12), 4), "GBP": round(random.uniform(0.83, 0.88), 4)}


# --- what producers send ---------------------------------------------------------------------------

_NAMES = ("maria.k", "jon.doe", "li.wei", "a.okafor", "sven", "priya.r", "tomasz.n", "ines.m")
_LOCALES = ("en", "de", "fr", "pl", "pt-BR")
_EVENTS = ("order.paid", "order.shipped", "customer.created", "refund.issued")


def _token() -> str:
    return "tok_live_" + uuid.uuid4().hex[:24]


def _call(task: str) -> tuple[str, dict[str, Any]]:
    """One job's task name and keyword arguments, with values that look real."""
    r = random
    if task == "send_welcome_email":
        return task, {"user_id": r.randint(10_000, 99_999), "email": f"{r.choice(_NAMES)}@example.com",
                      "locale": r.choice(_LOCALES)}
    if task == "resize_image":
        return task, {"image_id": f"img_{uuid.uuid4().hex[:10]}", "sizes": [64, 256, 1024]}
    if task == "call_webhook":
        return task, {"url": f"https://hooks.example.com/{r.choice(('acme', 'globex', 'initech'))}/events",
                      "event": r.choice(_EVENTS), "api_token": _token()}
    if task == "generate_report":
        return task, {"account_id": r.randint(1000, 1200), "month": f"2026-{r.randint(1, 10):02d}",
                      "format": r.choice(("pdf", "xlsx"))}
    if task == "sync_inventory":
        return task, {"batch_id": f"inv-{uuid.uuid4().hex[:8]}", "sku": f"SKU-{r.randint(10_000, 99_999)}",
                      "warehouse": r.choice(("ams-1", "fra-2", "waw-1"))}
    if task == "charge_card":
        return task, {"order_id": f"ord_{r.randint(100_000, 999_999)}", "amount_cents": r.randint(499, 25_000),
                      "currency": r.choice(("EUR", "USD", "GBP")), "customer_id": f"cus_{r.randint(1000, 9999)}"}
    if task == "import_csv":
        return task, {"path": f"s3://uploads/customers-2026-{r.randint(1, 11):02d}.csv",
                      "account_id": r.randint(1000, 1200)}
    raise ValueError(f"unknown demo task {task!r}")


#: Relative frequency of each task in the steady mix.
MIX = {
    "send_welcome_email": 30, "resize_image": 20, "call_webhook": 15, "sync_inventory": 14,
    "charge_card": 10, "generate_report": 6, "import_csv": 5,
}


def first_round() -> list[tuple[str, dict[str, Any]]]:
    """One job of every kind (with a card that will be declined), so every state shows up at once."""
    calls = [_call(task) for task in MIX]
    for task, kwargs in calls:
        if task == "charge_card":
            kwargs["customer_id"] = "cus_4217"
    return calls


def next_call() -> tuple[str, dict[str, Any]]:
    """The next job of the steady mix."""
    task = random.choices(list(MIX), weights=list(MIX.values()))[0]
    return _call(task)
