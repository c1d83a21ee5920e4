"""The round-trip health check: a task that proves the processor runs what the API enqueues.

The API inserts a probe row and this task in one transaction; the processor runs the task,
which marks the row completed. All SQL of the ``health_checks`` table lives here, so that the
task and the API that waits for it agree on one definition.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from common import db, enqueue
from common.serialization import serialize_arguments
from common.tasks import TaskPriority, register_task_handler

logger = logging.getLogger(__name__)

# Probe rows older than this belong to an API process that stopped mid-probe (a probe waits a
# minute at most): anyone may delete them, with their task if no worker took it.
ABANDONED_AFTER_SECONDS = 300

_INSERT_PROBE = "INSERT INTO task_processor.health_checks DEFAULT VALUES RETURNING id"
_LINK_TASK = "UPDATE task_processor.health_checks SET task_id = %s WHERE id = %s"
_MARK_COMPLETED = """
UPDATE task_processor.health_checks SET completed_at = now()
WHERE id = %s AND completed_at IS NULL
"""
_IS_COMPLETED = "SELECT completed_at IS NOT NULL FROM task_processor.health_checks WHERE id = %s"
_DELETE_PROBE = "DELETE FROM task_processor.health_checks WHERE id = %s"
# A probe task nobody ran yet is useless once its probe is over: keep the queue clean.
_DELETE_UNCLAIMED_TASK = """
DELETE FROM task_processor.tasks WHERE id = %s AND identifier = %s AND state = 'waiting'
"""
# Finished probe tasks carry no information once the API has answered. Running ones, and those
# finished a moment ago, are left to their worker, which may still be recording the attempt.
_DELETE_FINISHED_TASKS = """
DELETE FROM task_processor.tasks
WHERE identifier = %s AND state IN ('succeeded', 'dead', 'cancelled')
  AND finished_at < now() - interval '1 minute'
"""
_DELETE_ABANDONED_PROBES = """
WITH abandoned AS (
    DELETE FROM task_processor.health_checks
    WHERE created_at < now() - make_interval(secs => %s)
    RETURNING task_id
)
DELETE FROM task_processor.tasks
WHERE id IN (SELECT task_id FROM abandoned) AND identifier = %s AND state = 'waiting'
"""


@register_task_handler(
    task_name="round_trip_health_check",
    priority=TaskPriority.HIGHEST,
    timeout=timedelta(seconds=30),
    max_attempts=1,
)
def round_trip_health_check(probe_id: int) -> None:
    """Mark probe ``probe_id`` completed; a probe the API already gave up on is not an error."""
    connection = db.connect(db.queue_database_url(), "health-check")
    try:
        with connection.cursor() as cursor:
            cursor.execute(_MARK_COMPLETED, (probe_id,))
            if cursor.rowcount == 0:
                logger.info("health probe %s was already removed by the API", probe_id)
    finally:
        connection.close()


def start_probe(cursor) -> tuple[int, int]:
    """Insert a probe row and its task in the cursor's transaction; return (probe id, task id).

    The queue's own insert is used instead of ``.delay()``: the probe must reach the processor
    whatever ``TASK_RUN_METHOD`` the API runs with.
    """
    cursor.execute(_DELETE_FINISHED_TASKS, (round_trip_health_check.identifier,))
    cursor.execute(
        _DELETE_ABANDONED_PROBES, (ABANDONED_AFTER_SECONDS, round_trip_health_check.identifier)
    )
    cursor.execute(_INSERT_PROBE)
    probe_id = cursor.fetchone()[0]
    args_json, kwargs_json = serialize_arguments(
        round_trip_health_check.identifier, (probe_id,), None
    )
    (task_id,) = enqueue.insert(
        cursor, round_trip_health_check.kind, [enqueue.NewTask(args_json, kwargs_json)]
    )
    assert task_id is not None  # the probe task has no queue_size to refuse it
    cursor.execute(_LINK_TASK, (task_id, probe_id))
    return probe_id, task_id


def is_completed(cursor, probe_id: int) -> bool:
    """Whether the processor has run the probe's task."""
    cursor.execute(_IS_COMPLETED, (probe_id,))
    row = cursor.fetchone()
    return bool(row and row[0])


def finish_probe(cursor, probe_id: int, task_id: int) -> None:
    """Delete the probe row, and its task if no worker has claimed it."""
    cursor.execute(_DELETE_PROBE, (probe_id,))
    cursor.execute(_DELETE_UNCLAIMED_TASK, (task_id, round_trip_health_check.identifier))
