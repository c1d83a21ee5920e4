"""The supervisor's SQL: its heartbeat row, lease renewal, and giving back the tasks of
workers and processors that died, so that nothing is lost."""

from __future__ import annotations

from psycopg2 import sql

from common.lifecycle import (
    FINISHED_IF_DEAD,
    GIVE_BACK_UNSTARTED,
    LEASE_FREED,
    RETRY_DELAY,
    WAITING_OR_DEAD,
    WAKE,
)

# awaits_tasks: NULL until the listener says (inserts announce themselves to this processor
# meanwhile); false for a processor that does not listen.
REGISTER = """
INSERT INTO task_processor.processors
    (id, host, pid, num_workers, grace_period_ms, host_key, process_start_ticks,
     task_identifiers, awaits_tasks)
VALUES (%(processor_id)s, %(host)s, %(pid)s, %(num_workers)s, %(grace_period_ms)s,
        %(host_key)s, %(process_start_ticks)s, %(task_identifiers)s, %(awaits_tasks)s)
ON CONFLICT (id) DO NOTHING
"""

# Whether this processor has a worker waiting for new tasks: while it has, inserts announce
# themselves (NOTIFY), and only then (migration 0013).
AWAIT_TASKS = """
UPDATE task_processor.processors SET awaits_tasks = %(awaiting)s WHERE id = %(processor_id)s
"""

# Requeues the tasks selected by the CTE ``lost`` (columns id, lease_owner): each lost
# attempt counts, is recorded as ``worker_lost``, and a task out of attempts is dead. Idle
# workers are woken when anything was requeued.
_REQUEUE_LOST = f"""
WITH lost AS ({{select}}), requeued AS (
    UPDATE task_processor.tasks AS t
    SET state = {WAITING_OR_DEAD},
        finished_at = {FINISHED_IF_DEAD},
        last_error = %(reason)s || ' (worker ' || lost.lease_owner || ')',
        {LEASE_FREED}
    FROM lost WHERE t.id = lost.id
    RETURNING t.id, t.attempts, t.state, t.last_error, lost.lease_owner
), recorded AS (
    INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, result, error)
    SELECT id, attempts, lease_owner, now(), 'worker_lost', last_error FROM requeued
)
SELECT count(*) FROM requeued, LATERAL (SELECT {WAKE}) AS wake
"""

# Expired leases anywhere in the cluster (a processor on another host died with its tasks),
# a bounded batch per heartbeat so that one statement never locks much.
REQUEUE_EXPIRED = sql.SQL(_REQUEUE_LOST).format(
    select=sql.SQL("""
    SELECT id, lease_owner FROM task_processor.tasks
    WHERE state = 'running' AND lease_expires_at < now()
      AND NOT (lease_owner = ANY(%(own_owners)s))
    ORDER BY lease_expires_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED""")
)

# Every lease of one processor that is known to be dead.
REQUEUE_PROCESSOR = sql.SQL(_REQUEUE_LOST).format(
    select=sql.SQL("""
    SELECT id, lease_owner FROM task_processor.tasks
    WHERE state = 'running' AND starts_with(lease_owner, %(owner_prefix)s)
    FOR UPDATE""")
)

# The supervisor's heartbeat: its row (re-created if an operator deleted it), the leases of
# its live workers, renewed, and their rows (from the heartbeat slots), in one statement.
BEAT = """
WITH processor AS (
    INSERT INTO task_processor.processors AS p
        (id, host, pid, num_workers, grace_period_ms, state, host_key, process_start_ticks,
         task_identifiers, awaits_tasks)
    VALUES (%(processor_id)s, %(host)s, %(pid)s, %(num_workers)s, %(grace_period_ms)s,
            %(state)s, %(host_key)s, %(process_start_ticks)s, %(task_identifiers)s,
            %(awaits_tasks)s)
    ON CONFLICT (id) DO UPDATE
    SET last_beat_at = now(), num_workers = excluded.num_workers, state = excluded.state,
        grace_period_ms = excluded.grace_period_ms,
        -- a processor reloaded to poll only asks for no more announcements; one that
        -- listens leaves the column to its listener
        awaits_tasks = CASE WHEN excluded.awaits_tasks IS FALSE THEN false
                            ELSE p.awaits_tasks END
    RETURNING id
), renewed AS (
    -- Rows a worker of this processor holds locked right now are skipped, not waited for: it
    -- is claiming them (with a fresh lease) or finishing them (they leave 'running'). Waiting
    -- would lock them in another order than the worker and deadlock with it.
    UPDATE task_processor.tasks
    SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
    WHERE id IN (SELECT id FROM task_processor.tasks
                 WHERE state = 'running' AND lease_owner = ANY(%(own_owners)s)
                 FOR UPDATE SKIP LOCKED)
    RETURNING id
), worker_rows AS (
    INSERT INTO task_processor.workers AS w
        (processor_id, slot, pid, generation, state, task_id, task_deadline, last_beat_at,
         rss_bytes)
    SELECT %(processor_id)s, r.slot, r.pid, r.generation, r.state, r.task_id,
           now() + r.deadline_in * interval '1 second', now() - r.beat_age * interval '1 second',
           r.rss_bytes
    FROM unnest(%(worker_slots)s::integer[], %(worker_pids)s::integer[],
                %(worker_generations)s::integer[], %(worker_states)s::text[],
                %(worker_task_ids)s::bigint[], %(worker_deadlines_in)s::float8[],
                %(worker_beat_ages)s::float8[], %(worker_rss_bytes)s::bigint[])
        AS r(slot, pid, generation, state, task_id, deadline_in, beat_age, rss_bytes)
    ON CONFLICT (processor_id, slot) DO UPDATE
    SET pid = excluded.pid, generation = excluded.generation, state = excluded.state,
        task_id = excluded.task_id, task_deadline = excluded.task_deadline,
        last_beat_at = excluded.last_beat_at, rss_bytes = excluded.rss_bytes
)
SELECT (SELECT count(*) FROM renewed)
"""

# A worker that died: the task it was running (if it is still leased to it) counts the
# attempt and is retried (after a backoff when it overran its timeout or its memory limit, at
# once when it was killed from outside); the tasks it had claimed but not started go back
# without an attempt.
RELEASE_WORKER = f"""
WITH ran AS (
    UPDATE task_processor.tasks AS t
    SET state = {WAITING_OR_DEAD},
        scheduled_for = CASE WHEN %(backoff)s THEN now() + {RETRY_DELAY}
                             ELSE t.scheduled_for END,
        finished_at = {FINISHED_IF_DEAD},
        last_error = %(reason)s,
        {LEASE_FREED}
    WHERE t.id = %(task_id)s AND t.lease_owner = %(owner)s AND t.state = 'running'
    RETURNING t.id, t.attempts
), unstarted AS (
    UPDATE task_processor.tasks
    SET {GIVE_BACK_UNSTARTED}
    WHERE lease_owner = %(owner)s AND state = 'running' AND id <> %(task_id)s
    RETURNING id
), recorded AS (
    INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, result, error)
    SELECT id, attempts, %(owner)s, now() - %(running_seconds)s * interval '1 second',
           %(result)s, %(reason)s
    FROM ran
), released AS (
    SELECT id FROM ran UNION ALL SELECT id FROM unstarted
)
SELECT count(*) FROM released, LATERAL (SELECT {WAKE}) AS wake
"""

PROCESSORS_ON_HOST = """
SELECT id, pid, process_start_ticks FROM task_processor.processors
WHERE host_key = %(host_key)s AND state <> 'stopped' AND id <> %(processor_id)s
"""

MARK_STOPPED = """
WITH stopped AS (
    UPDATE task_processor.processors SET state = 'stopped', stopped_at = now()
    WHERE id = %(processor_id)s
)
DELETE FROM task_processor.workers WHERE processor_id = %(processor_id)s
"""

FORGET_WORKER_SLOT = """
DELETE FROM task_processor.workers WHERE processor_id = %(processor_id)s AND slot = %(slot)s
"""
