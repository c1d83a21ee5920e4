"""Tasks that wait because no processor that could run them is live.

A processor claims only the identifiers it has registered (``processors.task_identifiers``).
During a rolling deploy a newer release's tasks wait for its processors; a task whose
identifier no live processor knows waits until one does. The status command, the monitoring
endpoint and every processor (which warns about tasks it cannot run that wait long) read this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

# Due waiting tasks per identifier outside ``%(known)s`` (NULL: outside what every live
# processor knows; a live processor from before task_identifiers existed knows everything).
# The distinct waiting identifiers come from a skip scan of tasks_claim_known_idx, one probe
# per identifier; only the identifiers left are counted. A processor is live while its
# heartbeat is within its grace period, as check-health judges it.
_UNRUNNABLE = """
WITH RECURSIVE waiting AS (
    (SELECT identifier FROM task_processor.tasks WHERE state = 'waiting'
     ORDER BY identifier LIMIT 1)
    UNION ALL
    SELECT (SELECT t.identifier FROM task_processor.tasks AS t
            WHERE t.state = 'waiting' AND t.identifier > w.identifier
            ORDER BY t.identifier LIMIT 1)
    FROM waiting AS w WHERE w.identifier IS NOT NULL
), live AS (
    SELECT p.task_identifiers FROM task_processor.processors AS p
    WHERE p.state <> 'stopped'
      AND now() - p.last_beat_at <= make_interval(secs => p.grace_period_ms / 1000.0)
), known_to AS (
    SELECT w.identifier,
           (SELECT count(*) FROM live
            WHERE live.task_identifiers IS NULL
               OR w.identifier = ANY(live.task_identifiers)) AS live_processors_knowing
    FROM waiting AS w
    WHERE w.identifier IS NOT NULL
), outside AS MATERIALIZED (  -- only these are counted
    SELECT * FROM known_to
    WHERE CASE WHEN %(known)s::text[] IS NULL THEN live_processors_knowing = 0
               ELSE identifier <> ALL(%(known)s::text[]) END
)
SELECT o.identifier, s.waiting, s.oldest_seconds, o.live_processors_knowing
FROM outside AS o
CROSS JOIN LATERAL (
    SELECT count(*) AS waiting,
           extract(epoch FROM now() - min(t.scheduled_for))::float8 AS oldest_seconds
    FROM task_processor.tasks AS t
    WHERE t.state = 'waiting' AND t.identifier = o.identifier AND t.scheduled_for <= now()
) AS s
WHERE s.waiting > 0
ORDER BY o.identifier
"""


class Unrunnable(NamedTuple):
    """Due tasks of one identifier that wait for a processor that knows it."""

    identifier: str
    waiting: int
    oldest_seconds: float
    live_processors_knowing: int


def waiting_unrunnable(cursor: Any, known: Sequence[str] | None = None) -> list[Unrunnable]:
    """Due waiting tasks of identifiers outside ``known``; by default, outside what every live
    processor knows: the tasks nobody live can run."""
    cursor.execute(_UNRUNNABLE, {"known": list(known) if known is not None else None})
    return [Unrunnable(*row) for row in cursor.fetchall()]
