"""The worker's SQL: claim a batch under a lease, record the attempts, give back what it did
not start. Each is one statement; at the end of a batch, recording it and claiming the next
are one statement together, so a draining worker costs one round trip per batch."""

from __future__ import annotations

from common.prepared import Prepared

# Claims up to %(limit)s due tasks (the partial index tasks_claim_idx serves the inner
# SELECT), counts the attempt and sets the lease. Every row also says in how many seconds the
# next delayed task falls due (one probe of tasks_scheduled_idx); with nothing claimed, a single
# row carries only that. The worker's heartbeat row is the supervisor's to write (with its own
# heartbeat), so a claim writes nothing but the tasks it takes.
_CLAIM_CTES = """orphans AS (
    -- A worker claims only when it holds nothing: anything still leased to it comes from a
    -- claim whose answer was lost with a broken connection (and may have committed late).
    UPDATE task_processor.tasks
    SET state = 'waiting', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL
    WHERE lease_owner = %(owner)s AND state = 'running'{keep_recorded}
    RETURNING id
), next AS (
    SELECT id FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for <= now()
      -- nothing due: one probe of tasks_scheduled_idx instead of walking the delayed tasks
      -- (a min(), which the planner always serves from the index: an EXISTS was planned as a
      -- table scan that walks past every finished task, more of them as a drain goes on)
      AND (SELECT min(scheduled_for) FROM task_processor.tasks WHERE state = 'waiting')
          <= now()
    ORDER BY priority, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE task_processor.tasks AS t
    SET state = 'running', attempts = t.attempts + 1, lease_owner = %(owner)s,
        lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
    FROM next WHERE t.id = next.id
    RETURNING t.id, t.identifier, t.args, t.kwargs, t.priority, t.scheduled_for, t.attempts,
              t.max_attempts, t.timeout_ms
), upcoming AS (
    SELECT extract(epoch FROM min(scheduled_for) - now())::float8 AS due_in
    FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for > now()
)
"""
_CLAIM_RESULT = """
SELECT c.id, c.identifier, c.args, c.kwargs, c.attempts, c.max_attempts, c.timeout_ms,
       upcoming.due_in{recorded}
FROM upcoming
LEFT JOIN claimed AS c ON true
LEFT JOIN LATERAL (  -- wake other workers for the orphans given back
    SELECT pg_notify('task_processor', '') WHERE EXISTS (SELECT 1 FROM orphans)
) AS wake ON true
ORDER BY c.priority, c.scheduled_for, c.id
"""
CLAIM = "WITH " + _CLAIM_CTES.format(keep_recorded="") + _CLAIM_RESULT.format(recorded="")

# Records a batch of attempts and finishes their tasks. Fenced by the lease owner: a worker
# whose lease was taken away (it was too slow, its processor was presumed dead) changes
# nothing. Failures are retried after an exponential backoff with jitter, capped at
# %(max_backoff_seconds)s, until max_attempts; then the task is dead, with its last error.
_RECORD_CTES = """result AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(outcomes)s::text[], %(errors)s::text[],
                         %(started)s::timestamptz[], %(finished)s::timestamptz[],
                         %(retry_at)s::timestamptz[])
        AS r(task_id, outcome, error, started_at, finished_at, retry_at)
), finished AS (
    UPDATE task_processor.tasks AS t
    SET state = CASE
            WHEN r.outcome = 'success' THEN 'succeeded'
            WHEN t.attempts >= t.max_attempts THEN 'dead'
            ELSE 'waiting' END,
        scheduled_for = CASE
            WHEN r.outcome = 'success' OR t.attempts >= t.max_attempts THEN t.scheduled_for
            WHEN r.retry_at IS NOT NULL THEN r.retry_at
            ELSE now() + least(%(backoff_seconds)s * power(2, t.attempts - 1),
                               %(max_backoff_seconds)s)
                         * (0.5 + random() / 2) * interval '1 second' END,
        finished_at = CASE
            WHEN r.outcome = 'success' OR t.attempts >= t.max_attempts THEN now() END,
        last_error = CASE WHEN r.outcome = 'success' THEN t.last_error ELSE r.error END,
        lease_owner = NULL, lease_expires_at = NULL
    FROM result AS r
    WHERE t.id = r.task_id AND t.lease_owner = %(owner)s AND t.state = 'running'
    RETURNING t.id, t.attempts, t.state
), wake AS (  -- a retry was scheduled: idle workers learn its due time
    SELECT pg_notify('task_processor', 'scheduled') FROM finished
    WHERE state = 'waiting' LIMIT 1
)
"""
_RECORD_RUNS = """
INSERT INTO task_processor.runs (task_id, attempt, worker, started_at, finished_at, result, error)
SELECT r.task_id, f.attempts, %(owner)s, r.started_at, r.finished_at, r.outcome, r.error
FROM result AS r JOIN finished AS f ON f.id = r.task_id LEFT JOIN wake ON true
RETURNING task_id
"""
FINISH = "WITH " + _RECORD_CTES + _RECORD_RUNS

# A batch's end: records its attempts and claims the next batch in one statement, one commit
# (half the statements and commits of a drain). The claim's clean-up of orphaned leases leaves
# alone the tasks being recorded; the recorded ids come back with every row.
RECORD_THEN_CLAIM = (
    "WITH " + _RECORD_CTES + ", recorded AS (" + _RECORD_RUNS + "), "
    + _CLAIM_CTES.format(keep_recorded="\n      AND NOT (id = ANY(%(ids)s::bigint[]))")
    + _CLAIM_RESULT.format(recorded=", ARRAY(SELECT task_id FROM recorded) AS recorded"))

# Gives back claimed tasks that this worker did not start (it is draining, recycling or
# handing them to idle peers): the claim's attempt is undone and idle workers are woken.
RELEASE_UNSTARTED = """
WITH released AS (
    UPDATE task_processor.tasks
    SET state = 'waiting', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL
    WHERE lease_owner = %(owner)s AND state = 'running' AND id = ANY(%(ids)s::bigint[])
    RETURNING id
)
SELECT count(*) FROM released, LATERAL (SELECT pg_notify('task_processor', '')) AS wake
"""

# Claims and recordings are sent thousands of times a second while draining: each worker
# connection prepares them once (planning costs about as much as running them).
_CLAIM_TYPES = {"limit": "integer", "owner": "text", "lease_seconds": "integer"}
_RECORD_TYPES = {"ids": "bigint[]", "outcomes": "text[]", "errors": "text[]",
                 "started": "timestamptz[]", "finished": "timestamptz[]",
                 "retry_at": "timestamptz[]", "owner": "text", "backoff_seconds": "float8",
                 "max_backoff_seconds": "float8"}
PREPARED = (
    Prepared("task_processor_claim", CLAIM, _CLAIM_TYPES),
    Prepared("task_processor_finish", FINISH, _RECORD_TYPES),
    Prepared("task_processor_record_then_claim", RECORD_THEN_CLAIM,
             {**_RECORD_TYPES, **_CLAIM_TYPES}),
)
CLAIM_PREPARED, FINISH_PREPARED, RECORD_THEN_CLAIM_PREPARED = (
    statement.execute for statement in PREPARED)
