"""The recurring-task scheduler, run by the supervisor: it writes this processor's
definitions (:mod:`common.recurring`) and enqueues each run when it falls due."""

from __future__ import annotations

import logging
import time
from typing import Any

from common import db
from common.recurring import RecurringDefinition, definitions
from supervisor import recurring_queries

logger = logging.getLogger(__name__)

# The supervisor checks again at least this often, so that definitions changed by other
# processors are noticed within this many seconds.
RECHECK_SECONDS = 30.0
# A processor that has not beaten for this long no longer holds its definitions: a removed
# definition that only such processors had can be retired (a processor killed without a clean
# stop keeps the state 'running' in its row forever).
SILENT_PROCESSOR_SECONDS = 600


class RecurringDuty:
    """Owned by the supervisor; all calls happen in the supervisor's single thread.

    :meth:`start` once, then :meth:`run` whenever ``time.monotonic()`` reaches
    :meth:`next_due`. Errors of the connection propagate; the supervisor retries later.
    """

    def __init__(self, processor_id: str) -> None:
        self.processor_id = processor_id
        self._known: dict[str, RecurringDefinition] = {}
        self._next_due = time.monotonic()
        self._retirement_pending = False
        self._next_retirement_check = float("inf")

    def start(self, connection: db.Connection) -> None:
        """Record what this processor knows, write its definitions, retire removed ones."""
        self._known = {definition.identifier: definition for definition in definitions()}
        self._write_definitions(connection, list(self._known.values()))
        logger.info("recurring tasks of this processor: %s", ", ".join(self._known) or "none")
        self._retire_removed(connection)
        self._next_due = time.monotonic()

    def _write_definitions(
        self, connection: db.Connection, known: list[RecurringDefinition]
    ) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                recurring_queries.RECORD_KNOWN,
                {
                    "processor_id": self.processor_id,
                    "identifiers": [definition.identifier for definition in known],
                },
            )
            cursor.execute(recurring_queries.UPSERT_DEFINITIONS, self._definition_rows(known))

    def tasks_announced(self) -> None:
        """New tasks change nothing of the schedule."""

    def next_due(self) -> float:
        """The ``time.monotonic()`` value at which :meth:`run` should next be called."""
        return min(self._next_due, self._next_retirement_check)

    def run(self, connection: db.Connection) -> None:
        """Enqueue the runs that are due. With nothing due: one indexed read, no write."""
        if self._retirement_pending and time.monotonic() >= self._next_retirement_check:
            self._retire_removed(connection)
        if not self._known:
            self._next_due = time.monotonic() + RECHECK_SECONDS
            return
        upcoming = self._due_soon(connection)
        missing = [identifier for identifier, seconds in upcoming if seconds is None]
        if missing:
            logger.warning(
                "recurring tasks %s had no definition row (retired while this "
                "processor could not reach the database, or deleted): writing them "
                "again",
                ", ".join(missing),
            )
            self._write_definitions(connection, [self._known[i] for i in missing])
            upcoming = self._due_soon(connection)
        due = [
            identifier for identifier, seconds in upcoming if seconds is not None and seconds <= 0
        ]
        for identifier in due:
            self._enqueue(connection, self._known[identifier])
        if due:  # learn the new times, whoever advanced them
            upcoming = self._due_soon(connection)
        waits = [max(0.0, seconds) for _, seconds in upcoming if seconds is not None]
        self._next_due = time.monotonic() + min([RECHECK_SECONDS, *waits])

    def _definition_rows(self, known: list[RecurringDefinition]) -> dict[str, Any]:
        return {
            "processor_id": self.processor_id,
            "identifiers": [d.identifier for d in known],
            "run_every_us": [d.run_every_us for d in known],
            "first_run_times": [d.first_run_time for d in known],
            "args": [d.args_json for d in known],
            "kwargs": [d.kwargs_json for d in known],
        }

    def _due_soon(self, connection: db.Connection) -> list[tuple[str, float]]:
        with connection.cursor() as cursor:
            cursor.execute(
                recurring_queries.DUE_SOON,
                {"horizon_seconds": RECHECK_SECONDS, "identifiers": list(self._known)},
            )
            return cursor.fetchall()

    def _enqueue(self, connection: db.Connection, definition: RecurringDefinition) -> None:
        kind = definition.kind
        with connection.cursor() as cursor:
            cursor.execute(
                recurring_queries.ENQUEUE_DUE,
                {
                    "identifier": definition.identifier,
                    "priority": kind.priority,
                    "max_attempts": kind.max_attempts,
                    "timeout_ms": kind.timeout_ms,
                },
            )
            row = cursor.fetchone()
        if row is None:
            return  # another processor enqueued this slot first
        slot, task_id = row
        if task_id is None:
            logger.warning(
                "recurring task %s: slot %s already had a task",
                definition.identifier,
                slot.isoformat(),
            )
        else:
            logger.info(
                "recurring task %s: queued task %s for %s",
                definition.identifier,
                task_id,
                slot.isoformat(),
            )

    def _retire_removed(self, connection: db.Connection) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                recurring_queries.RETIRE_REMOVED,
                {
                    "processor_id": self.processor_id,
                    "identifiers": list(self._known),
                    "silent_seconds": SILENT_PROCESSOR_SECONDS,
                },
            )
            removed = cursor.fetchall()
        for identifier, retired in removed:
            if retired:
                logger.info("recurring task %s is no longer defined: retired", identifier)
            else:
                logger.info(
                    "recurring task %s is no longer defined here but a live processor "
                    "still has it: retiring it later",
                    identifier,
                )
        self._retirement_pending = not all(retired for _, retired in removed)
        self._next_retirement_check = (
            time.monotonic() + RECHECK_SECONDS if self._retirement_pending else float("inf")
        )
