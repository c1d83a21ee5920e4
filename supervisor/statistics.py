"""A periodic duty of the supervisor: keep the planner's statistics of the tasks table fresh.

The claim walks ``tasks_claim_idx`` in claim order only while the planner knows how many tasks
wait. A backlog that lands at once in a table whose statistics describe a small queue (a bulk
load after an outage, a ``TRUNCATE``) makes it fetch and sort every waiting task for each claim
instead, about a second a claim behind a million tasks, until the table is analysed; autovacuum
analyses only after it has vacuumed, which takes minutes on such a table. So every processor
looks, at its start (a backlog that grew during an outage waits for it) and twice a minute
after, at how much of the table changed since its last analysis, and analyses
it when that is a tenth of it or more (PostgreSQL's own default trigger)."""

from __future__ import annotations

import logging
import time

from common import db
from supervisor.periodic import PeriodicCheck

logger = logging.getLogger(__name__)

CHECK_EVERY = 30.0  # seconds between two looks: one statement per processor and look
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
