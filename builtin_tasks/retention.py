"""The retention clean-up: a recurring task every processor runs.

Succeeded and cancelled tasks (and their runs) go after ``--retention-days``, dead ones after
the longer ``--dead-retention-days`` (they are kept to be looked at and requeued), processor
and worker rows once their processor has been stopped or silent for ``--retention-days``.
Deletes go in small batches, each its own short transaction, so the queue never waits on the
clean-up, and the clean-up pauses after each batch for three times as long as the batch took:
it keeps a quarter of one backend at most, so a busy queue drains at nearly full speed while it
runs (an hour of tasks at 2,000/s is about 50 s of deleting, spread over some 3 minutes).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from builtin_tasks import retention_queries
from common import db
from common.settings import processor_settings
from common.tasks import TaskPriority, register_recurring_task

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000
PAUSE_FACTOR = 3.0  # after each full batch, wait this many times as long as it took


def delete_in_batches(
    connection,
    sql: str,
    params: dict,
    batch_size: int = BATCH_SIZE,
    pause_factor: float = PAUSE_FACTOR,
) -> int:
    """Run a one-batch DELETE until a batch comes back short; return the rows deleted.

    ``connection`` is in autocommit mode, so every batch commits on its own.
    """
    total = 0
    while True:
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(sql, {**params, "batch_size": batch_size})
            total += cursor.rowcount
        if cursor.rowcount < batch_size:
            return total
        time.sleep((time.monotonic() - started) * pause_factor)


def clean_up(
    connection: db.Connection,
    retention_days: int,
    dead_retention_days: int,
    batch_size: int = BATCH_SIZE,
) -> dict[str, int]:
    """Delete everything past its retention period; return the counts by kind."""
    days = retention_days
    counts = {
        "succeeded tasks": delete_in_batches(
            connection,
            retention_queries.DELETE_FINISHED_TASKS,
            {"state": "succeeded", "days": days},
            batch_size,
        ),
        "dead tasks": delete_in_batches(
            connection,
            retention_queries.DELETE_FINISHED_TASKS,
            {"state": "dead", "days": dead_retention_days},
            batch_size,
        ),
        "cancelled tasks": delete_in_batches(
            connection,
            retention_queries.DELETE_FINISHED_TASKS,
            {"state": "cancelled", "days": days},
            batch_size,
        ),
        "processors": delete_in_batches(
            connection, retention_queries.DELETE_OLD_PROCESSORS, {"days": days}, batch_size
        ),
        "workers": delete_in_batches(
            connection, retention_queries.DELETE_SILENT_WORKERS, {"days": days}, batch_size
        ),
    }
    logger.info(
        "retention clean-up deleted %s",
        ", ".join(f"{count} {kind}" for kind, count in counts.items()),
    )
    return counts


@register_recurring_task(
    run_every=timedelta(hours=1),
    timeout=timedelta(minutes=30),
    task_name="clean_up_old_tasks",
    priority=TaskPriority.LOW,
    max_attempts=1,
)
def clean_up_old_tasks() -> None:
    """The hourly clean-up; a failed run is simply done again by the next hour's run."""
    settings = processor_settings()
    if settings is None:
        raise RuntimeError(
            "the retention clean-up runs in a processor, whose options say how "
            "long to keep tasks; call clean_up() to run it elsewhere"
        )
    connection = db.connect(db.queue_database_url(), "retention")
    try:
        clean_up(connection, settings.retention_days, settings.dead_retention_days)
    finally:
        connection.close()
