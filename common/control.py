"""Operator actions on queued tasks: cancel a waiting task, run a delayed one now.

Used by ``task-processor cancel``, :func:`common.tasks.cancel_task` and the dashboard (which
also requeues dead tasks, with :data:`admin.queries.REQUEUE_DEAD`). Each action is one
statement that changes only tasks still in the state it expects, so it races safely with a
worker claiming the same task: whichever commits first wins, and the other changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from common import db
from common.lifecycle import CANCEL, WAKE

# Only a waiting task can be cancelled: a running one is in a worker's hands (its timeout is
# what stops it). The last error and the runs stay for reference.
_CANCEL = f"""
UPDATE task_processor.tasks
SET {CANCEL}
WHERE id = ANY(%s::bigint[]) AND state = 'waiting'
RETURNING id
"""

# A waiting task due later becomes due now, and idle workers are woken for it.
_RUN_NOW = f"""
WITH moved AS (
    UPDATE task_processor.tasks
    SET scheduled_for = now()
    WHERE id = ANY(%s::bigint[]) AND state = 'waiting' AND scheduled_for > now()
    RETURNING id
)
SELECT moved.id FROM moved, LATERAL (SELECT {WAKE}) AS wake
"""


def _ids(cursor: db.Cursor, sql: str, task_ids: Sequence[int]) -> list[int]:
    cursor.execute(sql, (list(task_ids),))
    return sorted(row[0] for row in cursor.fetchall())


def cancel(cursor: db.Cursor, task_ids: Sequence[int]) -> list[int]:
    """Cancel the given tasks that are waiting; return the ids cancelled."""
    return _ids(cursor, _CANCEL, task_ids)


def run_now(cursor: db.Cursor, task_ids: Sequence[int]) -> list[int]:
    """Make the given waiting tasks that are due later due now; return their ids."""
    return _ids(cursor, _RUN_NOW, task_ids)
