"""Example tasks: start a processor on them with ``run-task-processor --tasks examples.tasks``.

``greet`` appends a line to a file (``EXAMPLE_GREETINGS_FILE``, by default
``task-processor-greetings.log`` in the temporary directory) so that its effect can be seen
whichever process ran it.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from datetime import timedelta

from common.tasks import TaskPriority, register_task_handler

logger = logging.getLogger(__name__)


def greetings_file() -> str:
    """Where ``greet`` writes: read at call time, so a test can point it elsewhere."""
    return os.environ.get("EXAMPLE_GREETINGS_FILE") or os.path.join(
        tempfile.gettempdir(), "task-processor-greetings.log"
    )


@register_task_handler(priority=TaskPriority.HIGH, timeout=timedelta(seconds=10))
def greet(name: str, greeting: str = "Hello") -> None:
    """A quick task: one line in the log and in the greetings file."""
    line = f"{greeting}, {name}!"
    logger.info("%s", line)
    with open(greetings_file(), "a", encoding="utf-8") as file:
        file.write(line + "\n")


@register_task_handler(priority=TaskPriority.LOW, timeout=timedelta(seconds=30))
def count_slowly(seconds: int) -> None:
    """A slow task, one log line a second: within its 30 s timeout up to about 29."""
    for second in range(1, seconds + 1):
        time.sleep(1)
        logger.info("counted %d of %d seconds", second, seconds)


@register_task_handler(max_attempts=5)
def flaky(failure_rate: float = 0.5) -> None:
    """Fails at random; on the processor each failure is retried after a backoff, up to
    5 attempts, then the task is dead (see ``task-processor list --state dead``)."""
    if random.random() < failure_rate:
        raise RuntimeError(f"flaky failed, as it does {failure_rate:.0%} of the time")
    logger.info("flaky succeeded this time")
