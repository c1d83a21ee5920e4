"""Moving the queue to a database of its own without stranding a task.

When ``TASK_PROCESSOR_DATABASE_URL`` names another database than ``DATABASE_URL``, processors
run the queue of the former only; tasks still waiting in the ``task_processor`` schema of the
latter would never run. A processor says so loudly at start (:func:`warn_if_left_behind`),
and ``task-processor move-queue`` moves them (:func:`move_waiting`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common import db, migrations
from common.move_queue_sql import COLUMNS, LEFT_BEHIND, PUT_WAITING, TAKE_WAITING
from supervisor.queries import REQUEUE_EXPIRED

logger = logging.getLogger(__name__)

BATCH = 1000


@dataclass(frozen=True)
class LeftBehind:
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
    except Exception as error:  # noqa: BLE001 - a check at start must never stop the start
        logger.warning("could not check %s for tasks left behind: %s", db.describe(old),
                       " ".join(str(error).split())[:200])
        return
    if found is None or not (found.waiting or found.running):
        return
    logger.warning(
        "%d tasks wait (and %d run) in the task_processor schema of %s (DATABASE_URL), but this "
        "processor runs the queue of %s (TASK_PROCESSOR_DATABASE_URL): nothing runs them there. "
        "Move them with `task-processor move-queue` (see docs/operations.md, Moving the queue)",
        found.waiting, found.running, db.describe(old), db.describe(queue_url or ""))


def move_waiting(source_url: str, target_url: str) -> int:
    """Move every waiting task of the queue of ``source_url`` into the queue of
    ``target_url``, a batch at a time; return how many moved. Expired leases in the source
    are requeued first (their processors are gone), so those tasks move too. Each batch is
    committed in the target before it is deleted from the source: a crash in between leaves
    the batch in both (run twice, never lost)."""
    source = db.connect(source_url, "move-queue", autocommit=False)
    target = db.connect(target_url, "move-queue", autocommit=False)
    moved = 0
    try:
        migrations.check_current(source)
        migrations.check_current(target)
        with source.cursor() as cursor:
            cursor.execute(REQUEUE_EXPIRED, {"own_owners": [], "reason": "its lease expired"})
        source.commit()
        while True:
            with source.cursor() as cursor:
                cursor.execute(TAKE_WAITING, {"limit": BATCH})
                rows = cursor.fetchall()
            if not rows:
                source.commit()
                return moved
            columns = dict(zip(COLUMNS, map(list, zip(*rows))))
            with target.cursor() as cursor:
                cursor.execute(PUT_WAITING, columns)
            target.commit()
            source.commit()
            moved += len(rows)
            logger.info("moved %d waiting tasks so far", moved)
    finally:
        source.close()
        target.close()
