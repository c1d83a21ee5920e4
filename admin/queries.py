"""The SQL of the ``task-processor`` admin command: inspecting the queue and requeueing."""

from common.lifecycle import REVIVE, WAKE

STATE_COUNTS = """
SELECT state, count(*) FROM task_processor.tasks GROUP BY state
"""

WAITING_SUMMARY = """
SELECT count(*) FILTER (WHERE scheduled_for <= now()),
       count(*) FILTER (WHERE scheduled_for > now()),
       extract(epoch FROM now() - min(scheduled_for) FILTER (WHERE scheduled_for <= now()))
FROM task_processor.tasks
WHERE state = 'waiting'
"""

LIVE_PROCESSORS = """
SELECT id, host, pid, num_workers, state, extract(epoch FROM now() - last_beat_at)
FROM task_processor.processors
WHERE state <> 'stopped'
ORDER BY started_at
"""

LIST_TASKS = """
SELECT id, identifier, state, attempts, max_attempts, priority, scheduled_for, last_error
FROM task_processor.tasks
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(identifier)s::text IS NULL OR identifier = %(identifier)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

TASK = """
SELECT id, identifier, state, priority, attempts, max_attempts, timeout_ms, args::text,
       kwargs::text,
       created_at, scheduled_for, finished_at, lease_owner, lease_expires_at, last_error
FROM task_processor.tasks
WHERE id = %s
"""

TASK_RUNS = """
SELECT attempt, worker, started_at, finished_at, result, error
FROM task_processor.runs
WHERE task_id = %s
ORDER BY id
"""

# Dead tasks back to waiting, revived, by id or all of them (of one identifier).
REQUEUE_DEAD = f"""
WITH requeued AS (
    UPDATE task_processor.tasks
    SET {REVIVE}
    WHERE state = 'dead'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(identifier)s::text IS NULL OR identifier = %(identifier)s)
    RETURNING id
)
SELECT requeued.id FROM requeued, LATERAL (SELECT {WAKE}) AS wake
"""

STATES_OF = """
SELECT id, state FROM task_processor.tasks WHERE id = ANY(%s::bigint[])
"""
