"""The SQL of the retention clean-up. Each statement deletes one small batch and is its own
short transaction, so the clean-up never holds many locks or a long transaction."""

from __future__ import annotations

# One batch of finished tasks in ``state`` older than the cutoff, oldest first; their runs go
# with them (the tasks_delete_runs trigger: one statement per batch, migration 0012).
# tasks_finished_idx serves the inner SELECT; rows another transaction holds are left for the
# next batch instead of waited for.
DELETE_FINISHED_TASKS = """
DELETE FROM task_processor.tasks
WHERE id IN (
    SELECT id FROM task_processor.tasks
    WHERE state = %(state)s AND finished_at < now() - %(days)s * interval '1 day'
    ORDER BY finished_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
"""

# One batch of processor rows whose processor stopped, or went silent, before the cutoff; the
# identifiers they knew go with them (ON DELETE CASCADE).
DELETE_OLD_PROCESSORS = """
DELETE FROM task_processor.processors
WHERE id IN (
    SELECT id FROM task_processor.processors
    WHERE greatest(last_beat_at, stopped_at) < now() - %(days)s * interval '1 day'
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
"""

# One batch of worker rows silent since before the cutoff: those of the processors above, and
# any left behind (a worker row has no foreign key, so that it can beat whatever happens to
# the processors table). A live worker upserts its row again at its next beat anyway.
DELETE_SILENT_WORKERS = """
DELETE FROM task_processor.workers
WHERE (processor_id, slot) IN (
    SELECT processor_id, slot FROM task_processor.workers
    WHERE last_beat_at < now() - %(days)s * interval '1 day'
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
"""
