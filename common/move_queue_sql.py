"""The SQL of moving waiting tasks from one database's queue to another's."""

from __future__ import annotations

# What is left in a database's queue: NULL when it has no task_processor schema.
LEFT_BEHIND = """
SELECT CASE WHEN to_regclass('task_processor.tasks') IS NOT NULL THEN (
    SELECT array[count(*) FILTER (WHERE state = 'waiting'),
                 count(*) FILTER (WHERE state = 'running'),
                 count(*) FILTER (WHERE state = 'dead')]
    FROM task_processor.tasks WHERE state IN ('waiting', 'running', 'dead'))
END
"""

# Takes a batch of waiting tasks out of the old queue, in the caller's transaction: it is
# committed only once the new queue has committed their copies. Their runs go with them
# (ON DELETE CASCADE); the attempts already spent move in ``attempts``.
TAKE_WAITING = """
DELETE FROM task_processor.tasks
WHERE id IN (SELECT id FROM task_processor.tasks WHERE state = 'waiting'
             ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING identifier, args::text, kwargs::text, priority, scheduled_for, attempts,
          max_attempts, timeout_ms, created_at, last_error, recurring_identifier,
          recurring_slot
"""

# Puts them in the new queue as they were (new ids). A recurring run whose slot the new queue
# already has is not copied twice. The insert trigger wakes the new queue's idle workers.
PUT_WAITING = """
INSERT INTO task_processor.tasks
    (identifier, args, kwargs, priority, scheduled_for, attempts, max_attempts, timeout_ms,
     created_at, last_error, recurring_identifier, recurring_slot)
SELECT * FROM unnest(%(identifier)s::text[], %(args)s::jsonb[], %(kwargs)s::jsonb[],
                     %(priority)s::smallint[], %(scheduled_for)s::timestamptz[],
                     %(attempts)s::integer[], %(max_attempts)s::integer[],
                     %(timeout_ms)s::integer[], %(created_at)s::timestamptz[],
                     %(last_error)s::text[], %(recurring_identifier)s::text[],
                     %(recurring_slot)s::timestamptz[])
ON CONFLICT (recurring_identifier, recurring_slot) WHERE recurring_identifier IS NOT NULL
DO NOTHING
"""

COLUMNS = ("identifier", "args", "kwargs", "priority", "scheduled_for", "attempts",
           "max_attempts", "timeout_ms", "created_at", "last_error", "recurring_identifier",
           "recurring_slot")
