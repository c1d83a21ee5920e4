"""A periodic duty of the supervisor: keep the planner's statistics of the tasks table fresh.

The claim walks ``tasks_claim_idx`` in claim order only while the planner knows how many tasks
wait. A backlog that lands at once in a table whose statistics describe a small queue (a bulk
load after an outage, a ``TRUNCATE``) makes it fetch and sort every waiting task for each claim
instead, about a second a claim behind a million tasks, until the table is analysed; autovacuum
analyses only after it has vacuumed, which takes minutes on such a table. So every processor
looks, at its start (a backlog that grew during an outage waits for it), twice a minute after,
and within seconds of new tasks being announced (a burst of them: a look every 2 s at most
while tasks keep coming, none while the queue is quiet), at how much of the table changed
since its last analysis, and analyses it when that is a tenth of it or more (PostgreSQL's own
default trigger)."""

from __future__ import annotations

import logging
import time

from common import db
from supervisor.periodic import PeriodicCheck

logger = logging.getLogger(__name__)

CHECK_EVERY = 30.0  # seconds between two looks: one statement per processor and look
SOON_AFTER_NEW_TASKS = 2.0  # seconds: the shortest time between two looks while tasks come
STALE_FRACTION = 0.1  # of the table's rows changed since the last analysis
STALE_MINIMUM = 10_000  # rows: a small table is planned well whatever its statistics say

# Rows changed since the table was last analysed (by anyone), and the rows it had then.
_CHANGED = """
SELECT s.n_mod_since_analyze, greatest(c.reltuples, 0)::bigint
FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
WHERE s.relid = 'task_processor.tasks'::regclass
"""
_ANALYZE = "ANALYZE task_processor.tasks"


class StatisticsWatch(PeriodicCheck):
    """Owned by the supervisor (a :class:`supervisor.database.Duty`), in its single thread."""

    interval = CHECK_EVERY
    at_start = True

    def tasks_announced(self) -> None:
        """Look soon: the tasks just committed may be a burst that left the statistics stale
        (PostgreSQL's counts of changed rows reach the statistics view within a second of the
        commit, so a look at once may see nothing yet; the next one, 2 s on, does)."""
        self._next_due = min(self._next_due, self._last_run + SOON_AFTER_NEW_TASKS)

    def check(self, connection: db.Connection) -> None:
        with connection.cursor() as cursor:
            cursor.execute(_CHANGED)
            row = cursor.fetchone()
            if row is None:
                return
            changed, rows = row
            if changed < max(STALE_MINIMUM, STALE_FRACTION * rows):
                return
            started = time.monotonic()
            cursor.execute(_ANALYZE)
        logger.info(
            "analysed task_processor.tasks (%d rows changed since its last analysis) in %.1f s",
            changed,
            time.monotonic() - started,
        )
