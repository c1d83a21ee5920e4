"""The application's view: tasks enqueued, by identifier, on prometheus_client's default
registry, so that an application already exporting Prometheus metrics shows them with its own.

The name and label are those of Flagsmith's counter (``task_processor_enqueued_tasks_total``
with ``task_identifier``). Counted when the insert succeeds, which inside a caller's
transaction is before it commits: a rolled-back enqueue still counts, as in the reference.

Counted in a process that has imported prometheus_client, from that moment on: a process that
exports metrics has imported it. This module never imports it itself: prometheus_client and what
it imports (http, email, wsgiref) are 2.8 MiB of heap, which a processor (it imports the task
modules, and so this module, before it forks its workers) would carry for nothing, since its
default registry is served nowhere.
"""

from __future__ import annotations

import sys
from typing import Any

_counter: Any = None


def _enqueued_counter() -> Any:
    """The counter, registered on the default registry at the first call that finds
    prometheus_client imported; None before that."""
    global _counter
    if _counter is None and "prometheus_client" in sys.modules:
        from prometheus_client import Counter

        _counter = Counter(
            "task_processor_enqueued_tasks",
            "Tasks enqueued by this process, by task identifier.",
            ["task_identifier"],
        )
    return _counter


def count_enqueued(identifier: str, number: int) -> None:
    counter = _enqueued_counter() if number else None
    if counter is not None:
        counter.labels(task_identifier=identifier).inc(number)


_enqueued_counter()  # an application that imported prometheus_client first: shown at once
