"""The worker's SQL: claim a batch under a lease, record the attempts, give back what it did
not start. Each is one statement, so a worker costs one round trip per batch each way."""

from __future__ import annotations

from typing import Any, Sequence

from common.lifecycle import (
    FINISHED_IF_DEAD,
    GIVE_BACK_UNSTARTED,
    LEASE_FREED,
    NO_TIME_LIMIT_MS,
    OUT_OF_ATTEMPTS,
    RETRY_DELAY,
    WAKE,
    WAKE_SCHEDULED,
)
from worker.runner import Outcome

# Claims up to %(limit)s due tasks of the identifiers this processor knows (%(known)s): for
# each known identifier, the first due tasks in claim order (a short range scan of
# tasks_claim_known_idx), locked as they are read; the best %(limit)s of those are claimed. Tasks
# of identifiers it does not know are never read, locked or claimed: they wait for a processor
# that knows them. Locked candidates that are not claimed are free again when the statement
# ends; idle workers are woken for them, since a peer claiming at the same moment skipped them.
# The claim counts the attempt, sets the lease, and upserts the worker's heartbeat row in the
# same statement: busy until the latest time the batch may end (no deadline when a task has no
# time limit), or idle. Every row also says in how many seconds the next delayed task falls
# due (one probe of tasks_scheduled_idx); with nothing claimed, a single row carries only that.
CLAIM = f"""
WITH orphans AS (
    -- A worker claims only when it holds nothing: anything still leased to it comes from a
    -- claim whose answer was lost with a broken connection (and may have committed late).
    UPDATE task_processor.tasks
    SET {GIVE_BACK_UNSTARTED}
    WHERE lease_owner = %(owner)s AND state = 'running'
    RETURNING id
), locked AS (
    SELECT c.id, c.priority, c.scheduled_for
    FROM unnest(%(known)s::text[]) AS known(identifier)
    CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_for FROM task_processor.tasks
        WHERE state = 'waiting' AND identifier = known.identifier AND scheduled_for <= now()
        ORDER BY priority, scheduled_for, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    -- nothing due: one probe of tasks_scheduled_idx instead of walking the delayed tasks
    WHERE EXISTS (SELECT 1 FROM task_processor.tasks
                  WHERE state = 'waiting' AND scheduled_for <= now())
), next AS (
    SELECT id FROM locked ORDER BY priority, scheduled_for, id LIMIT %(limit)s
), claimed AS (
    UPDATE task_processor.tasks AS t
    SET state = 'running', attempts = t.attempts + 1, lease_owner = %(owner)s,
        lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
    FROM next WHERE t.id = next.id
    -- The arguments as the text .delay() wrote (rows written before migration 0009, or by
    -- hand, have only jsonb), decoded by the worker task by task: a row it cannot decode
    -- fails that task alone.
    RETURNING t.id, t.identifier, coalesce(t.args_exact::text, t.args::text) AS args,
              coalesce(t.kwargs_exact::text, t.kwargs::text) AS kwargs, t.priority,
              t.scheduled_for, t.attempts, t.max_attempts, t.timeout_ms,
              t.recurring_identifier IS NOT NULL AS recurring,
              -- how long it has been due, on the database's clock (the wait before its start)
              extract(epoch FROM now() - t.scheduled_for)::float8 AS waited,
              t.trace_context::text AS trace_context
), beat AS (
    INSERT INTO task_processor.workers AS w
        (processor_id, slot, pid, generation, state, task_id, task_deadline, last_beat_at)
    SELECT %(processor_id)s, %(slot)s, %(pid)s, %(generation)s,
           CASE WHEN count(*) > 0 THEN 'busy' ELSE 'idle' END, min(id),
           CASE WHEN NOT bool_or(timeout_ms = {NO_TIME_LIMIT_MS})
                THEN now() + sum(timeout_ms) * interval '1 millisecond' END, now()
    FROM claimed
    ON CONFLICT (processor_id, slot) DO UPDATE
    SET pid = excluded.pid, generation = excluded.generation, state = excluded.state,
        task_id = excluded.task_id, task_deadline = excluded.task_deadline,
        last_beat_at = excluded.last_beat_at
), upcoming AS (
    SELECT extract(epoch FROM min(scheduled_for) - now())::float8 AS due_in
    FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for > now()
)
SELECT c.id, c.identifier, c.args, c.kwargs, c.attempts, c.max_attempts, c.timeout_ms,
       c.recurring, c.waited, c.trace_context, upcoming.due_in
FROM upcoming
LEFT JOIN claimed AS c ON true
LEFT JOIN LATERAL (  -- wake other workers for the orphans given back and the tasks left
    SELECT {WAKE}
    WHERE EXISTS (SELECT 1 FROM orphans)
       OR (SELECT count(*) FROM locked) > (SELECT count(*) FROM next)
) AS wake ON true
ORDER BY c.priority, c.scheduled_for, c.id
"""

# Records a batch of attempts and finishes their tasks. Fenced by the lease owner: a worker
# whose lease was taken away (it was too slow, its processor was presumed dead) changes
# nothing. Failures are retried after the backoff of common.lifecycle until max_attempts; then
# the task is dead, with its last error.
FINISH = f"""
WITH result AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(outcomes)s::text[], %(errors)s::text[],
                         %(started)s::timestamptz[], %(finished)s::timestamptz[],
                         %(retry_at)s::timestamptz[])
        AS r(task_id, outcome, error, started_at, finished_at, retry_at)
), finished AS (
    UPDATE task_processor.tasks AS t
    SET state = CASE
            WHEN r.outcome = 'success' THEN 'succeeded'
            WHEN {OUT_OF_ATTEMPTS} THEN 'dead'
            ELSE 'waiting' END,
        scheduled_for = CASE
            WHEN r.outcome = 'success' OR {OUT_OF_ATTEMPTS} THEN t.scheduled_for
            WHEN r.retry_at IS NOT NULL THEN r.retry_at
            ELSE now() + {RETRY_DELAY} END,
        finished_at = CASE WHEN r.outcome = 'success' THEN now() ELSE {FINISHED_IF_DEAD} END,
        last_error = CASE WHEN r.outcome = 'success' THEN t.last_error ELSE r.error END,
        {LEASE_FREED}
    FROM result AS r
    WHERE t.id = r.task_id AND t.lease_owner = %(owner)s AND t.state = 'running'
    RETURNING t.id, t.attempts, t.state
), wake AS (  -- a retry was scheduled: idle workers learn its due time
    SELECT {WAKE_SCHEDULED} FROM finished
    WHERE state = 'waiting' LIMIT 1
)
INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, finished_at, result, error)
SELECT r.task_id, f.attempts, %(owner)s, r.started_at, r.finished_at, r.outcome, r.error
FROM result AS r JOIN finished AS f ON f.id = r.task_id LEFT JOIN wake ON true
RETURNING task_id
"""

# Gives back claimed tasks that this worker did not start (it is draining, recycling or
# handing them to idle peers): the claim's attempt is undone and idle workers are woken.
RELEASE_UNSTARTED = f"""
WITH released AS (
    UPDATE task_processor.tasks
    SET {GIVE_BACK_UNSTARTED}
    WHERE lease_owner = %(owner)s AND state = 'running' AND id = ANY(%(ids)s::bigint[])
    RETURNING id
)
SELECT count(*) FROM released, LATERAL (SELECT {WAKE}) AS wake
"""


def claim_parameters(*, limit: int, owner: str, lease_seconds: int, processor_id: str,
                     slot: int, pid: int, generation: int,
                     known: Sequence[str]) -> dict[str, Any]:
    """The parameters of :data:`CLAIM`."""
    return {"limit": limit, "owner": owner, "lease_seconds": lease_seconds,
            "processor_id": processor_id, "slot": slot, "pid": pid, "generation": generation,
            "known": list(known)}


def finish_parameters(outcomes: Sequence[Outcome], owner: str) -> dict[str, Any]:
    """The parameters of :data:`FINISH` for a batch of outcomes."""
    return {
        "ids": [o.task_id for o in outcomes],
        "outcomes": [o.result for o in outcomes],
        "errors": [o.error for o in outcomes],
        "started": [o.started_at for o in outcomes],
        "finished": [o.finished_at for o in outcomes],
        "retry_at": [o.retry_at for o in outcomes],
        "owner": owner,
    }
