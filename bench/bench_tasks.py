"""Tasks for the benchmarks."""

import time
from datetime import timedelta

from common.tasks import register_task_handler


@register_task_handler()
def noop() -> None:
    """Nothing: what is measured is the processor's own cost per task."""


@register_task_handler(timeout=timedelta(seconds=60))
def sleep(seconds: float) -> None:
    time.sleep(seconds)
