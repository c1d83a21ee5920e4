"""The worker's SQL: claim a batch under a lease, record the attempts, give back what it did
not start. Each is one statement; at the end of a batch, recording it and claiming the next
are one statement together, so a draining worker costs one round trip per batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

from common.lifecycle import (
    FINISHED_IF_DEAD,
    GIVE_BACK_UNSTARTED,
    LEASE_FREED,
    OUT_OF_ATTEMPTS,
    RETRY_DELAY,
    WAKE,
    WAKE_SCHEDULED,
)
from common.prepared import Prepared
from worker.runner import Outcome

# Claims up to %(limit)s due tasks of the identifiers this processor knows (%(known)s), in
# claim order (tasks_claim_idx; see docs/architecture.md for why a filter and not a range scan
# per identifier): tasks of identifiers it does not know are never locked or claimed, and wait
# for a processor that knows them. The claim counts the attempt and sets the lease. Every row
# also says in how many seconds the next delayed task falls due (one probe of
# tasks_scheduled_idx); with nothing claimed, a single row carries only that. The worker's
# heartbeat row is the supervisor's to write (with its own heartbeat), so a claim writes
# nothing but the tasks it takes.
_CLAIM_CTES = f"""orphans AS (
    -- A worker claims only when it holds nothing: anything still leased to it comes from a
    -- claim whose answer was lost with a broken connection (and may have committed late).
    UPDATE task_processor.tasks
    SET {GIVE_BACK_UNSTARTED}
    WHERE lease_owner = %(owner)s AND state = 'running'{{keep_recorded}}
    RETURNING id
), next AS (
    SELECT id FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for <= now() AND identifier = ANY(%(known)s::text[])
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
    -- The arguments as the text .delay() wrote (rows written before migration 0008, or by
    -- hand, have only jsonb), decoded by the worker task by task: a row it cannot decode
    -- fails that task alone.
    RETURNING t.id, t.identifier, coalesce(t.args_exact::text, t.args::text) AS args,
              coalesce(t.kwargs_exact::text, t.kwargs::text) AS kwargs, t.priority,
              t.scheduled_for, t.attempts, t.max_attempts, t.timeout_ms,
              t.recurring_identifier IS NOT NULL AS recurring,
              -- how long it has been due, on the database's clock (the wait before its start)
              extract(epoch FROM now() - t.scheduled_for)::float8 AS waited,
              t.trace_context::text AS trace_context
), upcoming AS (
    SELECT extract(epoch FROM min(scheduled_for) - now())::float8 AS due_in
    FROM task_processor.tasks
    WHERE state = 'waiting' AND scheduled_for > now()
)
"""
_CLAIM_RESULT = f"""
SELECT c.id, c.identifier, c.args, c.kwargs, c.attempts, c.max_attempts, c.timeout_ms,
       c.recurring, c.waited, c.trace_context, upcoming.due_in{{recorded}}
FROM upcoming
LEFT JOIN claimed AS c ON true
LEFT JOIN LATERAL (  -- wake other workers for the orphans given back
    SELECT {WAKE} WHERE EXISTS (SELECT 1 FROM orphans)
) AS wake ON true
ORDER BY c.priority, c.scheduled_for, c.id
"""
CLAIM = "WITH " + _CLAIM_CTES.format(keep_recorded="") + _CLAIM_RESULT.format(recorded="")

# Records a batch of attempts and finishes their tasks. Fenced by the lease owner: a worker
# whose lease was taken away (it was too slow, its processor was presumed dead) changes
# nothing. Failures are retried after the backoff of common.lifecycle until max_attempts; then
# the task is dead, with its last error.
_RECORD_CTES = f"""result AS (
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
    "WITH "
    + _RECORD_CTES
    + ", recorded AS ("
    + _RECORD_RUNS
    + "), "
    + _CLAIM_CTES.format(keep_recorded="\n      AND NOT (id = ANY(%(ids)s::bigint[]))")
    + _CLAIM_RESULT.format(recorded=", ARRAY(SELECT task_id FROM recorded) AS recorded")
)

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

# Claims and recordings are sent thousands of times a second while draining: each worker
# connection prepares them once, with its batch size written in, so that PostgreSQL plans them
# once and reuses the plan (planning costs about as much as running them; common/prepared.py).
_CLAIM_TYPES = {"limit": "integer", "owner": "text", "lease_seconds": "integer", "known": "text[]"}
_RECORD_TYPES = {
    "ids": "bigint[]",
    "outcomes": "text[]",
    "errors": "text[]",
    "started": "timestamptz[]",
    "finished": "timestamptz[]",
    "retry_at": "timestamptz[]",
    "owner": "text",
}


class Statements(NamedTuple):
    claim: Prepared
    finish: Prepared
    record_then_claim: Prepared


@functools.cache
def prepared(limit: int) -> Statements:
    """The worker's prepared statements for batches of ``limit`` (``--queuepopsize``)."""
    batch = {"limit": limit}
    return Statements(
        Prepared("claim", CLAIM, _CLAIM_TYPES, batch),
        Prepared("finish", FINISH, _RECORD_TYPES),
        Prepared("record_then_claim", RECORD_THEN_CLAIM, {**_RECORD_TYPES, **_CLAIM_TYPES}, batch),
    )


def claim_parameters(
    *, limit: int, owner: str, lease_seconds: int, known: Sequence[str]
) -> dict[str, Any]:
    """The parameters of :data:`CLAIM`."""
    return {"limit": limit, "owner": owner, "lease_seconds": lease_seconds, "known": list(known)}


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
