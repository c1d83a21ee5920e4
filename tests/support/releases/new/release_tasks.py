"""The newer release of the application's task module, written for Flagsmith's task processor
and unchanged: imports from ``task_processor.*`` and the reference's keyword arguments. It
adds a task and a recurring task that the older release (releases/old) does not know."""

from __future__ import annotations

from datetime import timedelta

from processor_tasks import record_key

from task_processor.decorators import register_recurring_task, register_task_handler
from task_processor.exceptions import InvalidArgumentsError
from task_processor.models import TaskPriority
from task_processor.task_run_method import TaskRunMethod

assert issubclass(InvalidArgumentsError, Exception) and TaskRunMethod.TASK_PROCESSOR


@register_task_handler(
    priority=TaskPriority.HIGH, transaction_on_commit=True, timeout=timedelta(seconds=30)
)
def shared(key: str) -> None:
    record_key(key)


@register_task_handler(
    task_name="added",
    queue_size=1000,
    priority=TaskPriority.LOW,
    transaction_on_commit=False,
    timeout=None,
)
def add_something(key: str) -> None:
    record_key(key)


@register_recurring_task(
    timedelta(seconds=1), "tick", (), {"key": "tick"}, None, timedelta(seconds=10)
)
def every_second(key: str) -> None:
    record_key(key)
