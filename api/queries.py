"""The SQL of the HTTP API's own endpoints (the probe's lives with its task)."""

from __future__ import annotations

from typing import Any

from api.pool import Cursor
from common.unrunnable_sql import waiting_unrunnable
from health import queries as health_queries

_PING = "SELECT 1"

# "waiting" is the reference's number: tasks due now that no worker has claimed.
_TASK_COUNTS = """
SELECT count(*) FILTER (WHERE state = 'waiting' AND scheduled_for <= now()) AS waiting,
       count(*) FILTER (WHERE state = 'waiting' AND scheduled_for > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       coalesce(extract(epoch FROM now() - min(scheduled_for)
                FILTER (WHERE state = 'waiting' AND scheduled_for <= now())), 0)::float8
           AS oldest_waiting_seconds
FROM task_processor.tasks
WHERE state IN ('waiting', 'running', 'dead')
"""


def ping(cursor: Cursor) -> None:
    """A round trip to the database."""
    cursor.execute(_PING)
    cursor.fetchone()


def monitoring(cursor: Cursor) -> dict[str, Any]:
    """Task counts by state, the age of the oldest due task, the due tasks that no live
    processor can run (their identifier is registered by none), and the live processors'
    workers."""
    cursor.execute(_TASK_COUNTS)
    row = cursor.fetchone()
    assert cursor.description is not None and row is not None  # one row of aggregates
    counts = dict(zip([column.name for column in cursor.description], row, strict=True))
    processors = [p for p in health_queries.processors_not_stopped(cursor) if p.beat_fresh]
    workers = health_queries.workers_of(cursor, [p.id for p in processors])
    counts["oldest_waiting_seconds"] = round(counts["oldest_waiting_seconds"], 3)
    counts["waiting_unrunnable"] = sum(group.waiting for group in waiting_unrunnable(cursor))
    counts["processors_alive"] = len(processors)
    counts["workers_alive"] = sum(
        1 for worker in workers if worker.healthy and worker.state is not None
    )
    return counts
