"""The one statement behind a scrape of ``/metrics``: the cluster as the database sees it.

It reads only what the partial indexes make cheap: tasks in the states that a queue keeps
bounded (waiting, running, dead; never the succeeded history), the processors that have not
stopped, and their workers' heartbeat rows. Times are compared with the database clock.
``bench/metrics_query.py`` measures it on a queue of a million tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.pool import Cursor

# The tasks in the bounded states, one branch per state so that each uses its partial index
# (a single ``state IN (...)`` would not match any of them and scans the whole table).
LIVE_TASKS = """
SELECT identifier, state, scheduled_for FROM task_processor.tasks WHERE state = 'waiting'
UNION ALL
SELECT identifier, state, scheduled_for FROM task_processor.tasks WHERE state = 'running'
UNION ALL
SELECT identifier, state, scheduled_for FROM task_processor.tasks WHERE state = 'dead'
"""

# Per identifier: due and later waiting tasks, running, dead, and how long the oldest due task
# has waited. Shared with the dashboard.
TASKS_BY_IDENTIFIER = f"""
SELECT identifier,
       count(*) FILTER (WHERE state = 'waiting' AND scheduled_for <= now()) AS due,
       count(*) FILTER (WHERE state = 'waiting' AND scheduled_for > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       coalesce(extract(epoch FROM now() - min(scheduled_for)
                FILTER (WHERE state = 'waiting' AND scheduled_for <= now())), 0)::float8
           AS oldest_due_seconds
FROM ({LIVE_TASKS}) AS live
GROUP BY identifier
ORDER BY identifier
"""

# The above; processors that have not stopped, each with its heartbeat judged by its own grace
# period ("silent": not stopped, yet no beat within the grace period); their workers' rows.
SNAPSHOT = f"""
SELECT
    (SELECT coalesce(json_agg(t), '[]') FROM ({TASKS_BY_IDENTIFIER}) AS t) AS tasks,
    (SELECT coalesce(json_agg(p), '[]') FROM (
        SELECT id, host,
               CASE WHEN now() - last_beat_at > make_interval(secs => grace_period_ms / 1000.0)
                    THEN 'silent' ELSE state END AS state,
               extract(epoch FROM now() - last_beat_at)::float8 AS beat_age_seconds
        FROM task_processor.processors
        WHERE state <> 'stopped'
    ) AS p) AS processors,
    (SELECT coalesce(json_agg(w), '[]') FROM (
        SELECT w.processor_id, w.slot, w.state,
               extract(epoch FROM now() - w.last_beat_at)::float8 AS beat_age_seconds
        FROM task_processor.workers AS w
        JOIN task_processor.processors AS p ON p.id = w.processor_id
        WHERE p.state <> 'stopped'
    ) AS w) AS workers
"""


@dataclass(frozen=True)
class Snapshot:
    tasks: list[dict[str, Any]]
    processors: list[dict[str, Any]]
    workers: list[dict[str, Any]]


def snapshot(cursor: Cursor) -> Snapshot:
    cursor.execute(SNAPSHOT)
    tasks, processors, workers = cursor.fetchone() or ([], [], [])
    return Snapshot(tasks, processors, workers)
