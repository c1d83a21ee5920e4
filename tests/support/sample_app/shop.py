"""A small application's task module, written for Flagsmith's task processor: the sample that
tests/test_pytest_plugin.py runs its own tests against."""

from __future__ import annotations

from task_processor.decorators import register_task_handler
from task_processor.models import TaskPriority

SENT: list[int] = []


@register_task_handler(priority=TaskPriority.HIGH)
def send_receipt(order_id: int) -> None:
    SENT.append(order_id)


@register_task_handler(transaction_on_commit=False)
def place_order(order_id: int) -> None:
    send_receipt.delay(args=(order_id,))


@register_task_handler()
def charge_card() -> None:
    raise RuntimeError("card declined")
