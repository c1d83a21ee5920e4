"""Enqueue the example tasks: ``python3 -m examples.enqueue`` from the checkout's root.

What ``.delay()`` does depends on ``TASK_RUN_METHOD``:

- ``TASK_PROCESSOR``: writes task rows in a migrated schema (the database of ``DATABASE_URL``,
  or without it the embedded server); a processor started with ``--tasks examples.tasks``
  runs them.
- ``SYNCHRONOUSLY``: runs each task here, before ``.delay()`` returns.
- ``SEPARATE_THREAD`` (the default): runs each task in a thread of this process; the script
  waits for those threads before it exits, as a long-running web server would not need to.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime, timedelta

from common.tasks import TaskRunMethod, run_method
from examples.tasks import count_slowly, flaky, greet, greetings_file


def enqueue_examples() -> list[int | None]:
    """Enqueue every example once, a delayed greeting, and a bulk of greetings; return the
    ids (None for a task that ran here instead of being queued)."""
    ids = [
        greet.delay(args=("world",)),
        greet.delay(kwargs={"name": "processor", "greeting": "Good morning"}),
        count_slowly.delay(args=(2,)),
        greet.delay(args=("later",), delay_until=datetime.now(UTC) + timedelta(seconds=3)),
    ]
    ids += greet.delay_many([{"args": (f"guest {number}",)} for number in range(1, 6)])
    try:
        ids.append(flaky.delay())
    except RuntimeError as error:  # SYNCHRONOUSLY: the task's exception reaches the caller
        print(f"flaky raised: {error}")
        ids.append(None)
    return ids


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(threadName)s %(name)s: %(message)s")
    method = run_method()
    print(f"TASK_RUN_METHOD is {method.value}")
    ids = enqueue_examples()
    if method is TaskRunMethod.TASK_PROCESSOR:
        print(f"queued {len(ids)} tasks: {', '.join(map(str, ids))}")
        print("run them with: run-task-processor --tasks examples.tasks")
        return 0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.daemon:
            thread.join()
    print(f"ran {len(ids)} tasks here; greetings are in {greetings_file()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
