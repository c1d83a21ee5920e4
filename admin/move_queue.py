"""``task-processor move-queue``: moving the waiting tasks of the queue that processors no
longer run (``DATABASE_URL``'s, once ``TASK_PROCESSOR_DATABASE_URL`` names another database)
into theirs, without stranding or losing a task."""

from __future__ import annotations

import logging

from common import db, migrations
from supervisor.queries import REQUEUE_EXPIRED

logger = logging.getLogger(__name__)

BATCH = 1000

# Takes a batch of waiting tasks out of the old queue, in the caller's transaction: it is
# committed only once the new queue has committed their copies. Their runs go with them
# (the tasks_delete_runs trigger, migration 0012); the attempts already spent move in ``attempts``.
TAKE_WAITING = """
DELETE FROM task_processor.tasks
WHERE id IN (SELECT id FROM task_processor.tasks WHERE state = 'waiting'
             ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING identifier, coalesce(args_exact::text, args::text),
          coalesce(kwargs_exact::text, kwargs::text), priority, scheduled_for, attempts,
          max_attempts, timeout_ms, created_at, last_error, recurring_identifier,
          recurring_slot
"""

# Puts them in the new queue as they were (new ids). A recurring run whose slot the new queue
# already has is not copied twice. The insert trigger wakes the new queue's idle workers.
PUT_WAITING = """
INSERT INTO task_processor.tasks
    (identifier, args, kwargs, args_exact, kwargs_exact, priority, scheduled_for, attempts,
     max_attempts, timeout_ms, created_at, last_error, recurring_identifier, recurring_slot)
SELECT identifier, args::jsonb, kwargs::jsonb, args::json, kwargs::json, priority, scheduled_for,
       attempts, max_attempts, timeout_ms, created_at, last_error, recurring_identifier,
       recurring_slot
FROM unnest(%(identifier)s::text[], %(args)s::text[], %(kwargs)s::text[],
                     %(priority)s::smallint[], %(scheduled_for)s::timestamptz[],
                     %(attempts)s::integer[], %(max_attempts)s::integer[],
                     %(timeout_ms)s::integer[], %(created_at)s::timestamptz[],
                     %(last_error)s::text[], %(recurring_identifier)s::text[],
                     %(recurring_slot)s::timestamptz[])
     AS moved(identifier, args, kwargs, priority, scheduled_for, attempts, max_attempts,
              timeout_ms, created_at, last_error, recurring_identifier, recurring_slot)
ON CONFLICT (recurring_identifier, recurring_slot) WHERE recurring_identifier IS NOT NULL
DO NOTHING
"""

COLUMNS = (
    "identifier",
    "args",
    "kwargs",
    "priority",
    "scheduled_for",
    "attempts",
    "max_attempts",
    "timeout_ms",
    "created_at",
    "last_error",
    "recurring_identifier",
    "recurring_slot",
)


def move_waiting(source_url: str, target_url: str) -> int:
    """Move every waiting task of the queue of ``source_url`` into the queue of
    ``target_url``, a batch at a time; return how many moved. Expired leases in the source
    are requeued first (their processors are gone), so those tasks move too. Each batch is
    committed in the target before it is deleted from the source: a crash in between leaves
    the batch in both (run twice, never lost)."""
    source = db.connect(source_url, "move-queue", autocommit=False)
    target = db.connect(target_url, "move-queue", autocommit=False)
    moved = 0
    try:
        migrations.check_current(source)
        migrations.check_current(target)
        with source.cursor() as cursor:
            cursor.execute(REQUEUE_EXPIRED, {"own_owners": [], "reason": "its lease expired"})
        source.commit()
        while True:
            with source.cursor() as cursor:
                cursor.execute(TAKE_WAITING, {"limit": BATCH})
                rows = cursor.fetchall()
            if not rows:
                source.commit()
                return moved
            columns = dict(zip(COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
            with target.cursor() as cursor:
                cursor.execute(PUT_WAITING, columns)
            target.commit()
            source.commit()
            moved += len(rows)
            logger.info("moved %d waiting tasks so far", moved)
    finally:
        source.close()
        target.close()
