"""SQL of the heartbeat tables for ``check-health`` and the API, judged on the database clock.

Every "is it fresh?" comparison is made by PostgreSQL with ``now()``, the clock that wrote the
heartbeats, so a skewed host clock cannot make a live processor look dead or the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

_GRACE = "make_interval(secs => p.grace_period_ms / 1000.0)"

_PROCESSOR_COLUMNS = f"""
SELECT p.id, p.host, p.pid, p.state, p.num_workers, p.grace_period_ms, p.started_at,
       p.last_beat_at, p.stopped_at,
       extract(epoch FROM now() - p.last_beat_at)::float8 AS beat_age_seconds,
       now() - p.last_beat_at <= {_GRACE} AS beat_fresh,
       now() - p.started_at <= {_GRACE} AS starting
FROM task_processor.processors p
"""

# The processor a host runs is its newest one that did not stop cleanly.
_NEWEST_ON_HOST = (
    _PROCESSOR_COLUMNS
    + """
WHERE p.host = %s AND p.state <> 'stopped' ORDER BY p.started_at DESC, p.id LIMIT 1
"""
)
_NEWEST_STOPPED_ON_HOST = (
    _PROCESSOR_COLUMNS
    + """
WHERE p.host = %s ORDER BY p.started_at DESC, p.id LIMIT 1
"""
)
_BY_ID = _PROCESSOR_COLUMNS + "WHERE p.id = %s"
_ALL_NOT_STOPPED = _PROCESSOR_COLUMNS + "WHERE p.state <> 'stopped' ORDER BY p.started_at, p.id"

# One row per configured slot, with or without a heartbeat row. A slot is healthy when its
# worker is idle or booting with a beat within the grace period, or busy before its batch's
# deadline plus the grace period (the time the supervisor has to replace it). A slot that never
# beat is healthy only while the processor itself is within its grace period of starting.
_WORKERS = f"""
SELECT p.id, s.slot, w.pid, w.generation, w.state, w.task_id, t.identifier, w.task_deadline,
       w.last_beat_at,
       extract(epoch FROM now() - w.last_beat_at)::float8 AS beat_age_seconds,
       extract(epoch FROM now() - w.task_deadline)::float8 AS past_deadline_seconds,
       CASE
           WHEN w.slot IS NULL THEN now() - p.started_at <= {_GRACE}
           WHEN w.state = 'busy' AND w.task_deadline IS NOT NULL
               THEN now() <= w.task_deadline + {_GRACE}
           -- a batch with a task of no time limit has no deadline: its processor watches it
           WHEN w.state = 'busy' THEN true
           ELSE now() - w.last_beat_at <= {_GRACE}
       END AS healthy
FROM task_processor.processors p
CROSS JOIN LATERAL generate_series(0, p.num_workers - 1) AS s(slot)
LEFT JOIN task_processor.workers w ON w.processor_id = p.id AND w.slot = s.slot
LEFT JOIN task_processor.tasks t ON t.id = w.task_id
WHERE p.id = ANY(%s)
ORDER BY p.started_at, p.id, s.slot
"""


@dataclass(frozen=True)
class ProcessorRow:
    id: str
    host: str
    pid: int
    state: str
    num_workers: int
    grace_period_ms: int
    started_at: datetime
    last_beat_at: datetime
    stopped_at: datetime | None
    beat_age_seconds: float
    beat_fresh: bool
    starting: bool


@dataclass(frozen=True)
class WorkerRow:
    processor_id: str
    slot: int
    pid: int | None
    generation: int | None
    state: str | None  # None: the slot has no heartbeat row yet
    task_id: int | None
    task_identifier: str | None
    task_deadline: datetime | None
    last_beat_at: datetime | None
    beat_age_seconds: float | None
    past_deadline_seconds: float | None
    healthy: bool


def _processors(cursor, sql: str, params: tuple) -> list[ProcessorRow]:
    cursor.execute(sql, params)
    return [ProcessorRow(*row) for row in cursor.fetchall()]


def processor_of_host(cursor, host: str) -> ProcessorRow | None:
    """The newest processor on ``host`` that has not stopped, else its newest stopped one."""
    found = _processors(cursor, _NEWEST_ON_HOST, (host,)) or _processors(
        cursor, _NEWEST_STOPPED_ON_HOST, (host,)
    )
    return found[0] if found else None


def processor_by_id(cursor, processor_id: str) -> ProcessorRow | None:
    found = _processors(cursor, _BY_ID, (processor_id,))
    return found[0] if found else None


def processors_not_stopped(cursor) -> list[ProcessorRow]:
    """Every processor that has not stopped cleanly, oldest first."""
    return _processors(cursor, _ALL_NOT_STOPPED, ())


def workers_of(cursor, processor_ids: list[str]) -> list[WorkerRow]:
    """One row per configured worker slot of the given processors."""
    if not processor_ids:
        return []
    cursor.execute(_WORKERS, (processor_ids,))
    return [WorkerRow(*row) for row in cursor.fetchall()]
