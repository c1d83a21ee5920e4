"""Moving the queue to a database of its own without stranding a task.

When ``TASK_PROCESSOR_DATABASE_URL`` names another database than ``DATABASE_URL``, processors
run the queue of the former only; tasks still waiting in the ``task_processor`` schema of the
latter would never run. A processor says so loudly at start (:func:`warn_if_left_behind`),
and ``task-processor move-queue`` moves them (:mod:`admin.move_queue`).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from common import db
from common.logs import one_line

logger = logging.getLogger(__name__)

# What is left in a database's queue: NULL when it has no task_processor schema.
LEFT_BEHIND = """
SELECT CASE WHEN to_regclass('task_processor.tasks') IS NOT NULL THEN (
    SELECT array[count(*) FILTER (WHERE state = 'waiting'),
                 count(*) FILTER (WHERE state = 'running'),
                 count(*) FILTER (WHERE state = 'dead')]
    FROM task_processor.tasks WHERE state IN ('waiting', 'running', 'dead'))
END
"""


class LeftBehind(NamedTuple):
    """Tasks in the queue of a database that processors no longer run."""

    waiting: int
    running: int
    dead: int


def other_queue(database_url: str | None, queue_url: str | None) -> str | None:
    """``DATABASE_URL`` when the queue was moved away from it, else None."""
    if database_url and queue_url and database_url != queue_url:
        return database_url
    return None


def left_behind(url: str) -> LeftBehind | None:
    """What the queue of ``url`` still holds; None when it has no task_processor schema."""
    connection = db.connect(url, "move-queue", statement_timeout_ms=5000)
    try:
        with connection.cursor() as cursor:
            cursor.execute(LEFT_BEHIND)
            (counts,) = cursor.fetchall()[0]
    finally:
        connection.close()
    return LeftBehind(*counts) if counts is not None else None


def warn_if_left_behind(database_url: str | None, queue_url: str | None) -> None:
    """At a processor's start: a warning with the count of tasks that wait in the queue of
    ``DATABASE_URL`` while this processor runs the one of ``TASK_PROCESSOR_DATABASE_URL``."""
    old = other_queue(database_url, queue_url)
    if old is None:
        return
    try:
        found = left_behind(old)
    except Exception as error:
        logger.warning(
            "could not check %s for tasks left behind: %s", db.describe(old), one_line(error, 200)
        )
        return
    if found is None or not (found.waiting or found.running):
        return
    logger.warning(
        "%d tasks wait (and %d run) in the task_processor schema of %s (DATABASE_URL), but this "
        "processor runs the queue of %s (TASK_PROCESSOR_DATABASE_URL): nothing runs them there. "
        "Move them with `task-processor move-queue` (see docs/operations.md, Moving the queue)",
        found.waiting,
        found.running,
        db.describe(old),
        db.describe(queue_url or ""),
    )
