"""``register_task_handler`` and ``register_recurring_task``, as the reference's users import
them. ``register_recurring_task`` takes its arguments in the reference's order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, time, timedelta
from typing import Any

from common import tasks
from common.tasks import TaskHandler, register_task_handler

__all__ = ["TaskHandler", "register_recurring_task", "register_task_handler"]


def register_recurring_task(
    run_every: timedelta,
    task_name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    first_run_time: time | datetime | None = None,
    timeout: timedelta | None = timedelta(minutes=30),
    **options: Any,
) -> Callable[[Callable[..., Any]], TaskHandler]:
    """:func:`common.tasks.register_recurring_task` with the reference's positional
    order (``run_every, task_name, args, kwargs, first_run_time, timeout``); ``priority`` and
    ``max_attempts`` are accepted by keyword."""
    return tasks.register_recurring_task(
        run_every,
        first_run_time=first_run_time,
        timeout=timeout,
        args=args,
        kwargs=kwargs,
        task_name=task_name,
        **options,
    )
