"""The application's view: tasks enqueued, by identifier, on prometheus_client's default
registry, so that an application already exporting Prometheus metrics shows them with its own.

The name and label are those of Flagsmith's counter (``task_processor_enqueued_tasks_total``
with ``task_identifier``). Counted only when prometheus_client is importable; otherwise this
costs nothing. Counted when the insert succeeds, which inside a caller's transaction is before
it commits: a rolled-back enqueue still counts, as in the reference.
"""

from __future__ import annotations

try:
    from prometheus_client import Counter
except ImportError:  # the extra is not installed: no metrics, no cost
    ENQUEUED = None
else:
    ENQUEUED = Counter(
        "task_processor_enqueued_tasks",
        "Tasks enqueued by this process, by task identifier.",
        ["task_identifier"],
    )


def count_enqueued(identifier: str, number: int) -> None:
    if ENQUEUED is not None and number:
        ENQUEUED.labels(task_identifier=identifier).inc(number)
