"""Tasks for the deployment tests (tests/system/test_deploy_*.py): the processor imports this
module with ``--tasks deploy_tasks`` from a directory on PYTHONPATH, as an image user would."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from common.tasks import register_task_handler


@register_task_handler(timeout=timedelta(seconds=30), max_attempts=1)
def nap(seconds: float) -> None:
    """Keeps a worker busy, so a stop request finds a task running."""
    time.sleep(seconds)


@register_task_handler(timeout=timedelta(seconds=30), max_attempts=2)
def nap_twice(seconds: float) -> None:
    """Like ``nap``, with a second attempt for when the first one's processor is lost."""
    time.sleep(seconds)


@register_task_handler(timeout=timedelta(seconds=30), max_attempts=1)
def leave_orphan(pid_file: str, linger_seconds: float) -> None:
    """Double-fork: the grandchild outlives its parent, is re-parented to PID 1 and exits there
    after ``linger_seconds``; unless PID 1 reaps it, it stays a zombie.

    The grandchild writes its pid (as its PID namespace sees it) to ``pid_file`` first.
    """
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            with open(pid_file, "w", encoding="ascii") as handle:
                handle.write(str(os.getpid()))
            time.sleep(linger_seconds)
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
