"""The dashboard's SQL, every statement parameterised. Reads touch the bounded states (waiting,
running, dead) through their partial indexes (the statement shared with /metrics), and finished
tasks and attempts only for the last hour; nothing scans the whole history. Requeueing dead
tasks is the admin command's statement."""

from __future__ import annotations

from typing import Any

from admin import queries as admin_queries
from api.metrics_queries import TASKS_BY_IDENTIFIER
from api.pool import Cursor
from common import control

Row = dict[str, Any]

PAGE_SIZE = 50
STATES = ("waiting", "running", "succeeded", "dead", "cancelled")
KILLED = ("timeout", "worker_lost")

_FINISHED_LAST_HOUR = """
SELECT count(*) FILTER (WHERE state = 'succeeded') AS succeeded_last_hour,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled_last_hour
FROM task_processor.tasks
WHERE state IN ('succeeded', 'cancelled') AND finished_at > now() - interval '1 hour'
"""

# Attempts per minute over the last hour: minute 0 is the current one.
_THROUGHPUT = """
SELECT (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', finished_at))
        / 60)::int AS minutes_ago,
       count(*) FILTER (WHERE result = 'success') AS succeeded,
       count(*) FILTER (WHERE result IN ('failure', 'timeout', 'worker_lost')) AS failed
FROM task_processor.runs
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY 1
"""

_PROCESSORS = """
SELECT id, host, pid, state, num_workers, started_at,
       extract(epoch FROM now() - last_beat_at)::float8 AS beat_age_seconds,
       now() - last_beat_at <= make_interval(secs => grace_period_ms / 1000.0) AS beat_fresh
FROM task_processor.processors
WHERE state <> 'stopped'
ORDER BY started_at, id
"""

# Each worker's row with its current task, and the attempts that ended with the worker killed
# (timeout) or lost (died, stopped, killed for memory) in the last hour, with the latest reason.
_WORKERS = """
SELECT w.processor_id, w.slot, w.pid, w.generation, w.state, w.task_id,
       t.identifier AS task_identifier,
       extract(epoch FROM now() - w.last_beat_at)::float8 AS beat_age_seconds,
       w.rss_bytes, coalesce(k.kills, 0) AS kills_last_hour, k.last_kill
FROM task_processor.workers AS w
LEFT JOIN task_processor.tasks AS t ON t.id = w.task_id
LEFT JOIN LATERAL (
    SELECT count(*) AS kills,
           (array_agg(r.result || coalesce(': ' || r.error, '') ORDER BY r.finished_at DESC))[1]
               AS last_kill
    FROM task_processor.runs AS r
    WHERE r.finished_at > now() - interval '1 hour'
      AND r.result IN ('timeout', 'worker_lost')
      AND left(r.worker, length(w.processor_id) + 2 + length(w.slot::text))
          = w.processor_id || '/' || w.slot || '.'
) AS k ON true
WHERE w.processor_id = ANY(%s)
ORDER BY w.processor_id, w.slot
"""

_TASK_COLUMNS = """
SELECT id, identifier, state, attempts, max_attempts, priority, scheduled_for, created_at,
       finished_at, last_error, scheduled_for > now() AS delayed
FROM task_processor.tasks
"""

_LIST_FILTER = """
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(identifier)s::text IS NULL OR identifier = %(identifier)s)
"""

# Keyset paging, newest first: a page before an id (older) or after one (newer).
_TASKS_BEFORE = (
    _TASK_COLUMNS + _LIST_FILTER + "AND (%(before)s::bigint IS NULL OR id < %(before)s) "
    "ORDER BY id DESC LIMIT %(limit)s"
)
_TASKS_AFTER = _TASK_COLUMNS + _LIST_FILTER + "AND id > %(after)s ORDER BY id ASC LIMIT %(limit)s"

_TASK = """
SELECT id, identifier, state, attempts, max_attempts, priority, timeout_ms, args, kwargs,
       created_at, scheduled_for, finished_at, lease_owner, lease_expires_at, last_error,
       recurring_identifier, recurring_slot, scheduled_for > now() AS delayed
FROM task_processor.tasks
WHERE id = %s
"""

_RUNS = """
SELECT attempt, worker, started_at, finished_at, result, error,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds
FROM task_processor.runs
WHERE task_id = %s
ORDER BY id
"""

_RECURRING = """
SELECT s.identifier, s.run_every, s.next_run_at,
       extract(epoch FROM s.next_run_at - now())::float8 AS next_in_seconds,
       s.last_task_id, s.last_slot, s.last_state, s.last_attempts, s.last_error,
       t.finished_at AS last_finished_at
FROM task_processor.recurring_task_status AS s
LEFT JOIN task_processor.tasks AS t ON t.id = s.last_task_id
ORDER BY s.identifier
"""


def _rows(cursor: Cursor, sql: str, params: Any = None) -> list[Row]:
    cursor.execute(sql, params)
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def by_identifier(cursor: Cursor) -> list[Row]:
    """Per identifier: due, scheduled, running and dead tasks, and the oldest due one's age."""
    return _rows(cursor, TASKS_BY_IDENTIFIER)


def overview(cursor: Cursor, identifiers: list[Row]) -> Row:
    """The totals of ``identifiers``, and the tasks that succeeded or were cancelled in the
    last hour."""
    totals: Row = {
        key: sum(row[key] for row in identifiers) for key in ("due", "scheduled", "running", "dead")
    }
    totals["oldest_due_seconds"] = max(
        (row["oldest_due_seconds"] for row in identifiers), default=0.0
    )
    return totals | _rows(cursor, _FINISHED_LAST_HOUR)[0]


def throughput(cursor: Cursor) -> list[Row]:
    """60 rows, oldest minute first, each with its succeeded and failed attempts."""
    found = {row["minutes_ago"]: row for row in _rows(cursor, _THROUGHPUT)}
    return [
        found.get(ago, {"minutes_ago": ago, "succeeded": 0, "failed": 0})
        for ago in range(59, -1, -1)
    ]


def processors(cursor: Cursor) -> list[Row]:
    """Processors that have not stopped, each with its workers' rows under ``workers``."""
    found = _rows(cursor, _PROCESSORS)
    workers = _rows(cursor, _WORKERS, ([p["id"] for p in found],)) if found else []
    for processor in found:
        processor["workers"] = [w for w in workers if w["processor_id"] == processor["id"]]
    return found


def tasks(
    cursor: Cursor,
    state: str | None,
    identifier: str | None,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[Row]:
    """One page of tasks, newest first; one more than ``limit`` tells that a next page exists."""
    params = {
        "state": state,
        "identifier": identifier,
        "before": before,
        "after": after,
        "limit": limit + 1,
    }
    if after is not None:
        return list(reversed(_rows(cursor, _TASKS_AFTER, params)))
    return _rows(cursor, _TASKS_BEFORE, params)


def task(cursor: Cursor, task_id: int) -> Row | None:
    """A task with every attempt under ``runs``; None if there is no such task."""
    found = _rows(cursor, _TASK, (task_id,))
    if not found:
        return None
    found[0]["runs"] = _rows(cursor, _RUNS, (task_id,))
    return found[0]


def recurring(cursor: Cursor) -> list[Row]:
    return _rows(cursor, _RECURRING)


# -- actions: each returns the ids it changed ------------------------------------------------


def requeue_dead(
    cursor: Cursor, task_id: int | None = None, identifier: str | None = None
) -> list[int]:
    """One dead task by id, or every dead task of an identifier, back to waiting."""
    cursor.execute(
        admin_queries.REQUEUE_DEAD,
        {"ids": [task_id] if task_id is not None else None, "identifier": identifier},
    )
    return [row[0] for row in cursor.fetchall()]


def cancel(cursor: Cursor, task_id: int) -> list[int]:
    return control.cancel(cursor, [task_id])


def run_now(cursor: Cursor, task_id: int) -> list[int]:
    return control.run_now(cursor, [task_id])
