"""The SQL of recurring tasks: definitions, the due check, enqueueing a slot, retirement.

Every time that several processors compare is the database's ``now()``, so hosts with skewed
clocks still agree on what is due.
"""

from __future__ import annotations

# Records which identifiers this processor start knows (before its definitions are written,
# so that a concurrent retirement already sees it as a holder).
RECORD_KNOWN = """
INSERT INTO task_processor.processor_recurring_tasks (identifier, processor_id)
SELECT identifier, %(processor_id)s FROM unnest(%(identifiers)s::text[]) AS identifier
ON CONFLICT DO NOTHING
"""

# Writes this code's definitions. A new definition starts at the first grid point from now (a
# first run time in the past does not make up for runs before the definition existed). A
# changed schedule restarts from the first grid point of the new schedule; an unchanged one
# keeps its place. Unset first_run_time keeps the origin of the first start.
UPSERT_DEFINITIONS = """
INSERT INTO task_processor.recurring_tasks AS r
    (identifier, run_every_us, first_run_time, grid_origin, args, kwargs, args_exact,
     kwargs_exact, next_run_at, defined_at, defined_by)
SELECT d.identifier, d.run_every_us, d.first_run_time, coalesce(d.first_run_time, now()),
       d.args::jsonb, d.kwargs::jsonb, d.args::json, d.kwargs::json,
       task_processor.recurring_slot_at_or_after(
           coalesce(d.first_run_time, now()), d.run_every_us, now()),
       now(), %(processor_id)s
FROM unnest(%(identifiers)s::text[], %(run_every_us)s::bigint[],
            %(first_run_times)s::timestamptz[], %(args)s::text[], %(kwargs)s::text[])
     AS d(identifier, run_every_us, first_run_time, args, kwargs)
ON CONFLICT (identifier) DO UPDATE
SET run_every_us = excluded.run_every_us,
    first_run_time = excluded.first_run_time,
    grid_origin = coalesce(excluded.first_run_time, r.grid_origin),
    args = excluded.args,
    kwargs = excluded.kwargs,
    args_exact = excluded.args_exact,
    kwargs_exact = excluded.kwargs_exact,
    next_run_at = CASE
        WHEN r.run_every_us = excluded.run_every_us
             AND r.grid_origin = coalesce(excluded.first_run_time, r.grid_origin)
        THEN r.next_run_at
        ELSE task_processor.recurring_slot_at_or_after(
            coalesce(excluded.first_run_time, r.grid_origin), excluded.run_every_us, now())
        END,
    defined_at = now(),
    defined_by = excluded.defined_by
"""

# The due check: one read by primary key of this processor's definitions, no lock, no write.
# Returns those due within the horizon, with the seconds until each is due (<= 0: due now), and
# those whose row is missing (NULL: retired while this processor could not reach the database,
# or deleted by hand), which the processor writes again. Identifiers this processor does not
# know are never read (another release runs them).
DUE_SOON = """
SELECT known.identifier, extract(epoch FROM r.next_run_at - now())::float8
FROM unnest(%(identifiers)s::text[]) AS known(identifier)
LEFT JOIN task_processor.recurring_tasks AS r ON r.identifier = known.identifier
WHERE r.identifier IS NULL
   OR r.next_run_at <= now() + %(horizon_seconds)s * interval '1 second'
ORDER BY r.next_run_at NULLS FIRST
"""

# Enqueues the latest passed slot of one definition, if it is still due, and moves next_run_at
# to the slot after it, in one statement. Of several processors that run this at once, the row
# lock lets one advance the row; the others find it no longer due. The unique slot index
# refuses a second task for a slot whatever happens. Returns the slot and the new task's id.
ENQUEUE_DUE = """
WITH advanced AS (
    UPDATE task_processor.recurring_tasks AS r
    SET next_run_at = task_processor.recurring_slot_at_or_before(
            r.grid_origin, r.run_every_us, now()) + r.run_every_us * interval '1 microsecond'
    WHERE r.identifier = %(identifier)s AND r.next_run_at <= now()
    RETURNING r.identifier, r.args, r.kwargs, r.args_exact, r.kwargs_exact,
              r.next_run_at - r.run_every_us * interval '1 microsecond' AS slot
), inserted AS (
    INSERT INTO task_processor.tasks
        (identifier, args, kwargs, args_exact, kwargs_exact, priority, max_attempts,
         timeout_ms, recurring_identifier, recurring_slot)
    SELECT identifier, args, kwargs, args_exact, kwargs_exact, %(priority)s, %(max_attempts)s,
           %(timeout_ms)s, identifier, slot
    FROM advanced
    ON CONFLICT (recurring_identifier, recurring_slot) WHERE recurring_identifier IS NOT NULL
    DO NOTHING
    RETURNING id
)
SELECT advanced.slot, (SELECT id FROM inserted) FROM advanced
"""

# Retires definitions this processor does not have, written before it started (so they were
# removed from the code, not added by a newer release), once no live processor has them. A
# processor is live while it is not stopped and has beaten within %(silent_seconds)s. Returns
# every such definition and whether it was retired; those not retired wait for their holders.
RETIRE_REMOVED = """
WITH removed AS (
    SELECT r.identifier, EXISTS (
        SELECT 1
        FROM task_processor.processor_recurring_tasks AS k
        JOIN task_processor.processors AS p ON p.id = k.processor_id
        WHERE k.identifier = r.identifier AND p.state <> 'stopped'
          AND p.last_beat_at > now() - %(silent_seconds)s * interval '1 second'
    ) AS held
    FROM task_processor.recurring_tasks AS r
    WHERE r.identifier <> ALL(%(identifiers)s::text[])
      AND r.defined_at < (SELECT started_at FROM task_processor.processors
                          WHERE id = %(processor_id)s)
), retired AS (
    DELETE FROM task_processor.recurring_tasks AS r
    USING removed
    WHERE r.identifier = removed.identifier AND NOT removed.held
      AND r.defined_at < (SELECT started_at FROM task_processor.processors
                          WHERE id = %(processor_id)s)
    RETURNING r.identifier
)
SELECT removed.identifier, removed.identifier IN (SELECT identifier FROM retired)
FROM removed
ORDER BY removed.identifier
"""
